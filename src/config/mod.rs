//! Configuration: the TOML device map and agent settings.
//!
//! Owns parsing (`raw`, serde types that mirror the file, with spans) and validation
//! (`validate`, which turns raw types into the checked types of `types` and reports **every**
//! problem at once, each with file, line and column). Nothing else reads the config file.
//! `units` converts values with units ("15s", "64MiB", "40001") and `limits` holds the range
//! of every duration.
//!
//! This file is the wing's front door only: the checked types are re-exported from `types`,
//! the loader from `validate`; the files below import each other, never this one.

pub mod ha_classes;
pub mod limits;
pub mod raw;
mod types;
pub mod units;
pub mod validate;

pub use types::*;
pub use validate::{load, load_str, ConfigError, ConfigErrors};
