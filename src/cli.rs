//! Command-line definitions (clap) only.
