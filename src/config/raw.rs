//! config raw
