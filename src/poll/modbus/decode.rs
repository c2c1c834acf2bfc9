//! Pure decoding of registers and bits into values.
