//! Pure request planning: coalesces a device's points into the fewest reads.
