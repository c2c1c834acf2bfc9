//! config units
