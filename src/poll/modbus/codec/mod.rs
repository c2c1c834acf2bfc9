//! The register codec: pure decoding of registers and bits into values, and its inverse for
//! writes, so a written value goes through exactly the rules a read comes back through.
//!
//! Owns the byte-order rules, string handling and scale/offset. No I/O; never looks at
//! requests or transports.
//!
//! Byte order: registers travel big-endian (high byte first), so the wire bytes of a point are
//! `r0.hi r0.lo r1.hi r1.lo ...`. [`WordOrder`] names where the value's bytes A (most
//! significant) .. D sit on the wire:
//! - `ABCD`: as on the wire (Modbus big-endian);
//! - `CDAB`: the order of the 16-bit words is reversed (for 64-bit: `GHEFCDAB`);
//! - `BADC`: the bytes within each word are swapped (`BADCFEHG`);
//! - `DCBA`: all bytes reversed, little-endian (`HGFEDCBA`).
//!
//! 16-bit values only know the byte swap: `ABCD`/`CDAB` read `AB`, `BADC`/`DCBA` read `BA`.
//! Strings: two ASCII characters per register, high byte first, except with `BADC`/`DCBA`
//! (low byte first); cut at the first NUL, surrounding spaces trimmed; bytes that are not
//! UTF-8 become U+FFFD rather than failing the point.
//!
//! Scale and offset: an integer point with scale 1 and offset 0 stays an integer (`Int`, or
//! `UInt` above `i64::MAX`); anything else is `Float(raw * scale + offset)`. NaN and
//! infinities are passed on as they are: the publisher decides how to encode them.
//!
//! Encoding (writes) is defined by the read-back: a value is encodable when decoding the
//! registers it becomes gives that value again. So `(value - offset) / scale` must be a whole
//! number of raw steps within the type's range for integers, and an f32 point takes only
//! values whose f32 reads back as the same decimal. Anything else is refused with the reason
//! and the nearest values that would go through: never rounded, truncated or clamped.
//!
//! `decode` reads, `encode` writes; both go through this module's byte-order permutation,
//! which is its own inverse.

pub mod decode;
pub mod encode;
mod order;
#[cfg(test)]
mod tests;

pub use decode::{decode_bit, decode_registers, raw_from_registers, scale, widen_f32, DecodeError};
pub use encode::{encode_bit, encode_registers, EncodeError, Encoded};
