//! Logging: journald when JOURNAL_STREAM matches stderr, readable stderr otherwise.
