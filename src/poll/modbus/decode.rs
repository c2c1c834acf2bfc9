//! Pure decoding of registers and bits into values.
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

use crate::config::{DataType, Point, WordOrder};
use crate::model::Value;

/// Why a point could not be decoded from the data of its request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, got {got}")]
    TooShort { expected: usize, got: usize },
    #[error("a {0:?} point cannot be read from a bit table")]
    NotABit(DataType),
}

/// Decodes and scales a point from its registers (`words` starts at the point's address).
pub fn decode_registers(point: &Point, words: &[u16]) -> Result<Value, DecodeError> {
    let raw = raw_from_registers(point.data_type, point.order, words)?;
    Ok(scale(raw, point.scale, point.offset))
}

/// Decodes a point from a coil or discrete input.
pub fn decode_bit(point: &Point, bit: bool) -> Result<Value, DecodeError> {
    match point.data_type {
        DataType::Bool => Ok(Value::Bool(bit)),
        other => Err(DecodeError::NotABit(other)),
    }
}

/// The unscaled value of `data_type` in `words`, per `order`.
pub fn raw_from_registers(
    data_type: DataType,
    order: WordOrder,
    words: &[u16],
) -> Result<Value, DecodeError> {
    let width = usize::from(data_type.width());
    if words.len() < width {
        return Err(DecodeError::TooShort {
            expected: width,
            got: words.len(),
        });
    }
    let words = &words[..width];
    Ok(match data_type {
        DataType::Bool => Value::Bool(words[0] != 0),
        DataType::U16 => Value::Int(i64::from(u16::from_be_bytes(ordered::<2>(words, order)))),
        DataType::I16 => Value::Int(i64::from(i16::from_be_bytes(ordered::<2>(words, order)))),
        DataType::U32 => Value::Int(i64::from(u32::from_be_bytes(ordered::<4>(words, order)))),
        DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(ordered::<4>(words, order)))),
        DataType::U64 => {
            let v = u64::from_be_bytes(ordered::<8>(words, order));
            match i64::try_from(v) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::UInt(v),
            }
        }
        DataType::I64 => Value::Int(i64::from_be_bytes(ordered::<8>(words, order))),
        DataType::F32 => Value::Float(widen_f32(f32::from_be_bytes(ordered::<4>(words, order)))),
        DataType::F64 => Value::Float(f64::from_be_bytes(ordered::<8>(words, order))),
        DataType::String { .. } => Value::Text(text(words, order)),
    })
}

/// The f64 whose shortest decimal form is the f32's own: a meter's 230.1f32 is published as
/// 230.1, not as 230.10000610351562 (plain widening), and narrows back to the same f32.
pub fn widen_f32(v: f32) -> f64 {
    if v.is_finite() {
        v.to_string().parse().unwrap_or(f64::from(v))
    } else {
        f64::from(v)
    }
}

/// Applies `raw * scale + offset`; integers and text untouched when the scale is neutral.
pub fn scale(raw: Value, scale: f64, offset: f64) -> Value {
    let neutral = scale == 1.0 && offset == 0.0;
    match raw {
        Value::Int(i) if !neutral => Value::Float(i as f64 * scale + offset),
        Value::UInt(u) if !neutral => Value::Float(u as f64 * scale + offset),
        Value::Float(f) if !neutral => Value::Float(f * scale + offset),
        other => other,
    }
}

/// The value's bytes, most significant first, from the wire words per `order`.
fn ordered<const N: usize>(words: &[u16], order: WordOrder) -> [u8; N] {
    let mut wire = [0u8; N];
    for (i, w) in words.iter().take(N / 2).enumerate() {
        wire[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
    }
    match order {
        WordOrder::Abcd => wire,
        WordOrder::Dcba => {
            wire.reverse();
            wire
        }
        WordOrder::Badc => {
            for pair in wire.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
            wire
        }
        WordOrder::Cdab => {
            let mut out = [0u8; N];
            let n_words = N / 2;
            for i in 0..n_words {
                let src = n_words - 1 - i;
                out[2 * i..2 * i + 2].copy_from_slice(&wire[2 * src..2 * src + 2]);
            }
            out
        }
    }
}

fn text(words: &[u16], order: WordOrder) -> String {
    let low_first = matches!(order, WordOrder::Badc | WordOrder::Dcba);
    let mut bytes = Vec::with_capacity(words.len() * 2);
    for w in words {
        let [hi, lo] = w.to_be_bytes();
        if low_first {
            bytes.extend_from_slice(&[lo, hi]);
        } else {
            bytes.extend_from_slice(&[hi, lo]);
        }
    }
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    String::from_utf8_lossy(&bytes)
        .trim_matches(' ')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Table;

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    /// Lays big-endian value bytes out on the wire per `order`, written independently of
    /// `ordered` (index tables, not reversal loops), then packs them into registers.
    fn wire_words(be: &[u8], order: WordOrder) -> Vec<u16> {
        let n = be.len();
        let wire: Vec<u8> = match (n, order) {
            (_, WordOrder::Abcd) => be.to_vec(),
            (2, WordOrder::Cdab) => be.to_vec(),
            (2, _) => vec![be[1], be[0]],
            (4, WordOrder::Cdab) => [2, 3, 0, 1].iter().map(|&i| be[i]).collect(),
            (4, WordOrder::Badc) => [1, 0, 3, 2].iter().map(|&i| be[i]).collect(),
            (4, WordOrder::Dcba) => [3, 2, 1, 0].iter().map(|&i| be[i]).collect(),
            (8, WordOrder::Cdab) => [6, 7, 4, 5, 2, 3, 0, 1].iter().map(|&i| be[i]).collect(),
            (8, WordOrder::Badc) => [1, 0, 3, 2, 5, 4, 7, 6].iter().map(|&i| be[i]).collect(),
            (8, WordOrder::Dcba) => [7, 6, 5, 4, 3, 2, 1, 0].iter().map(|&i| be[i]).collect(),
            _ => unreachable!(),
        };
        wire.chunks(2)
            .map(|c| (u16::from(c[0]) << 8) | u16::from(c[1]))
            .collect()
    }

    fn point(data_type: DataType, order: WordOrder, scale: f64, offset: f64) -> Point {
        Point {
            order,
            scale,
            offset,
            ..Point::new("p", Table::Holding, 0, data_type)
        }
    }

    fn decode(data_type: DataType, order: WordOrder, be: &[u8], s: f64, o: f64) -> Value {
        decode_registers(&point(data_type, order, s, o), &wire_words(be, order)).unwrap()
    }

    const SCALES: [(f64, f64); 3] = [(1.0, 0.0), (0.1, 0.0), (0.01, -40.0)];

    fn expect_int(raw: i128, s: f64, o: f64) -> Value {
        if s == 1.0 && o == 0.0 {
            match i64::try_from(raw) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::UInt(raw as u64),
            }
        } else {
            Value::Float(raw as f64 * s + o)
        }
    }

    #[test]
    fn every_integer_type_in_every_order_and_scale_matches_to_be_bytes() {
        for order in ORDERS {
            for (s, o) in SCALES {
                for v in [0u16, 1, 0x1234, 0xFFFF] {
                    let got = decode(DataType::U16, order, &v.to_be_bytes(), s, o);
                    assert_eq!(got, expect_int(v.into(), s, o), "u16 {v} {order:?}");
                }
                for v in [0i16, -1, -12345, i16::MIN, i16::MAX] {
                    let got = decode(DataType::I16, order, &v.to_be_bytes(), s, o);
                    assert_eq!(got, expect_int(v.into(), s, o), "i16 {v} {order:?}");
                }
                for v in [0u32, 0x1234_5678, u32::MAX] {
                    let got = decode(DataType::U32, order, &v.to_be_bytes(), s, o);
                    assert_eq!(got, expect_int(v.into(), s, o), "u32 {v} {order:?}");
                }
                for v in [0i32, -2, -0x1234_5678, i32::MIN, i32::MAX] {
                    let got = decode(DataType::I32, order, &v.to_be_bytes(), s, o);
                    assert_eq!(got, expect_int(v.into(), s, o), "i32 {v} {order:?}");
                }
                for v in [0u64, 0x0102_0304_0506_0708, i64::MAX as u64, u64::MAX] {
                    let got = decode(DataType::U64, order, &v.to_be_bytes(), s, o);
                    assert_eq!(got, expect_int(v.into(), s, o), "u64 {v} {order:?}");
                }
                for v in [0i64, -3, -0x0102_0304_0506_0708, i64::MIN, i64::MAX] {
                    let got = decode(DataType::I64, order, &v.to_be_bytes(), s, o);
                    assert_eq!(got, expect_int(v.into(), s, o), "i64 {v} {order:?}");
                }
            }
        }
    }

    #[test]
    fn u64_above_i64_max_stays_unsigned() {
        let v = u64::MAX - 5;
        for order in ORDERS {
            assert_eq!(
                decode(DataType::U64, order, &v.to_be_bytes(), 1.0, 0.0),
                Value::UInt(v)
            );
        }
    }

    #[test]
    fn every_float_type_in_every_order_and_scale_matches_to_be_bytes() {
        for order in ORDERS {
            for (s, o) in SCALES {
                for v in [0.0f32, -0.0, 1.5, -273.15, f32::MAX, f32::MIN_POSITIVE] {
                    let got = decode(DataType::F32, order, &v.to_be_bytes(), s, o);
                    let widened: f64 = v.to_string().parse().unwrap();
                    assert_eq!(widened as f32, v, "widening keeps the f32");
                    let want = if s == 1.0 && o == 0.0 {
                        widened
                    } else {
                        widened * s + o
                    };
                    assert_eq!(got, Value::Float(want), "f32 {v} {order:?}");
                }
                for v in [0.0f64, 1e300, -123456.789, f64::MIN_POSITIVE] {
                    let got = decode(DataType::F64, order, &v.to_be_bytes(), s, o);
                    let want = if s == 1.0 && o == 0.0 { v } else { v * s + o };
                    assert_eq!(got, Value::Float(want), "f64 {v} {order:?}");
                }
            }
        }
    }

    #[test]
    fn nan_and_infinities_are_decoded_faithfully() {
        for order in ORDERS {
            for v in [f32::INFINITY, f32::NEG_INFINITY] {
                assert_eq!(
                    decode(DataType::F32, order, &v.to_be_bytes(), 1.0, 0.0),
                    Value::Float(f64::from(v))
                );
            }
            for v in [f64::INFINITY, f64::NEG_INFINITY] {
                assert_eq!(
                    decode(DataType::F64, order, &v.to_be_bytes(), 2.0, 1.0),
                    Value::Float(v)
                );
            }
            let nan32 = decode(DataType::F32, order, &f32::NAN.to_be_bytes(), 1.0, 0.0);
            assert!(matches!(nan32, Value::Float(f) if f.is_nan()));
            let nan64 = decode(DataType::F64, order, &f64::NAN.to_be_bytes(), 0.5, 3.0);
            assert!(matches!(nan64, Value::Float(f) if f.is_nan()));
        }
    }

    #[test]
    fn the_four_orders_of_one_f32_match_known_wire_layouts() {
        // 1.5f32 = 0x3FC00000: a fixed table so a symmetric bug in both helpers cannot hide.
        let cases = [
            (WordOrder::Abcd, [0x3FC0, 0x0000]),
            (WordOrder::Cdab, [0x0000, 0x3FC0]),
            (WordOrder::Badc, [0xC03F, 0x0000]),
            (WordOrder::Dcba, [0x0000, 0xC03F]),
        ];
        for (order, words) in cases {
            let p = point(DataType::F32, order, 1.0, 0.0);
            assert_eq!(decode_registers(&p, &words).unwrap(), Value::Float(1.5));
        }
    }

    #[test]
    fn strings_read_two_chars_per_register_and_trim_nuls_and_spaces() {
        let p = point(DataType::String { registers: 4 }, WordOrder::Abcd, 1.0, 0.0);
        let words = [0x4142, 0x4344, 0x2000, 0x0000]; // "ABCD "
        assert_eq!(
            decode_registers(&p, &words).unwrap(),
            Value::Text("ABCD".into())
        );
        let p = point(DataType::String { registers: 3 }, WordOrder::Cdab, 1.0, 0.0);
        let words = [0x2053, 0x4E31, 0x3233]; // " SN123"
        assert_eq!(
            decode_registers(&p, &words).unwrap(),
            Value::Text("SN123".into())
        );
    }

    #[test]
    fn byte_swapped_strings_read_the_low_byte_first() {
        for order in [WordOrder::Badc, WordOrder::Dcba] {
            let p = point(DataType::String { registers: 2 }, order, 1.0, 0.0);
            assert_eq!(
                decode_registers(&p, &[0x4241, 0x0043]).unwrap(),
                Value::Text("ABC".into())
            );
        }
    }

    #[test]
    fn strings_ignore_scale_and_keep_invalid_bytes_visible() {
        let p = point(
            DataType::String { registers: 1 },
            WordOrder::Abcd,
            10.0,
            1.0,
        );
        assert_eq!(
            decode_registers(&p, &[0x41FF]).unwrap(),
            Value::Text("A\u{FFFD}".into())
        );
    }

    #[test]
    fn bool_from_a_register_is_true_when_not_zero() {
        let p = point(DataType::Bool, WordOrder::Abcd, 1.0, 0.0);
        assert_eq!(decode_registers(&p, &[0]).unwrap(), Value::Bool(false));
        assert_eq!(decode_registers(&p, &[0x0100]).unwrap(), Value::Bool(true));
    }

    #[test]
    fn bool_from_a_bit_and_non_bools_refused_from_bits() {
        let p = point(DataType::Bool, WordOrder::Abcd, 1.0, 0.0);
        assert_eq!(decode_bit(&p, true).unwrap(), Value::Bool(true));
        let p = point(DataType::U16, WordOrder::Abcd, 1.0, 0.0);
        assert!(decode_bit(&p, true).is_err());
    }

    #[test]
    fn too_few_registers_is_an_error_not_a_panic() {
        let p = point(DataType::F64, WordOrder::Abcd, 1.0, 0.0);
        assert_eq!(
            decode_registers(&p, &[1, 2]),
            Err(DecodeError::TooShort {
                expected: 4,
                got: 2
            })
        );
    }

    #[test]
    fn extra_registers_after_the_point_are_ignored() {
        let p = point(DataType::U16, WordOrder::Abcd, 1.0, 0.0);
        assert_eq!(decode_registers(&p, &[7, 8, 9]).unwrap(), Value::Int(7));
    }
}
