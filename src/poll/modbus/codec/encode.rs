//! Writing: a value in engineering units into the registers or coil state that read back as
//! it, or the reason there are none.

use super::decode::widen_f32;
use super::order::ordered;
use crate::config::{DataType, Point, WordOrder};
use crate::model::Value;

/// What goes on the wire for a value: registers, or a coil's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Registers(Vec<u16>),
    Coil(bool),
}

/// Why a value cannot be written to a point. Nothing goes on the wire.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("a {data_type:?} point takes {expected}, not {given}")]
    WrongKind {
        data_type: DataType,
        expected: &'static str,
        given: String,
    },
    #[error("{value} is out of range: a {data_type:?} point holds {min} to {max}")]
    OutOfRange {
        data_type: DataType,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error(
        "{value} is not a whole number of steps of {step} (scale {step}, offset {offset}): \
         the nearest values the device can hold are {below} and {above}"
    )]
    BetweenSteps {
        value: f64,
        step: f64,
        offset: f64,
        below: f64,
        above: f64,
    },
    #[error("{value} cannot be held by an f32 register: it would read back as {read_back}")]
    NotAnF32 { value: f64, read_back: f64 },
    #[error("{0} is not a number a register can hold")]
    NotFinite(f64),
    #[error("{text:?} does not fit: the point holds {bytes} bytes of text")]
    TextTooLong { text: String, bytes: usize },
    #[error("{0:?} would not read back as written (NUL bytes or surrounding spaces)")]
    TextNotReadBack(String),
}

/// The registers that make `value` (in engineering units) at `point`: the inverse of
/// [`decode_registers`], refusing what would not read back as `value`.
pub fn encode_registers(point: &Point, value: &Value) -> Result<Vec<u16>, EncodeError> {
    let data_type = point.data_type;
    let wrong_kind = |expected: &'static str| EncodeError::WrongKind {
        data_type,
        expected,
        given: value.to_string(),
    };
    let neutral = point.scale == 1.0 && point.offset == 0.0;
    match data_type {
        DataType::String { registers } => match value {
            Value::Text(t) => encode_text(t, registers, point.order),
            _ => Err(wrong_kind("text")),
        },
        DataType::Bool => match bool_of(value) {
            Some(b) => Ok(vec![u16::from(b)]),
            None => Err(wrong_kind("true or false")),
        },
        DataType::F32 | DataType::F64 => {
            let v = number_of(value).ok_or_else(|| wrong_kind("a number"))?;
            encode_float(point, v)
        }
        _ => {
            // Integers in, integers out, with no f64 in between: a u64 counter above 2^53
            // must be written exactly.
            let exact = match value {
                Value::Int(i) if neutral => Some(i128::from(*i)),
                Value::UInt(u) if neutral => Some(i128::from(*u)),
                _ => None,
            };
            let raw = match exact {
                Some(raw) => raw,
                None => {
                    let v = number_of(value).ok_or_else(|| wrong_kind("a number"))?;
                    whole_steps(point, v)?
                }
            };
            let (min, max) = integer_range(data_type);
            if raw < min || raw > max {
                return Err(EncodeError::OutOfRange {
                    data_type,
                    value: number_of(value).unwrap_or(raw as f64),
                    min: min as f64 * point.scale + point.offset,
                    max: max as f64 * point.scale + point.offset,
                });
            }
            let be = raw.to_be_bytes();
            let width = usize::from(data_type.width()) * 2;
            Ok(to_wire(&be[16 - width..], point.order))
        }
    }
}

/// The coil state for `value` (a bool, or 0 / 1): the inverse of [`decode_bit`].
pub fn encode_bit(point: &Point, value: &Value) -> Result<bool, EncodeError> {
    match point.data_type {
        DataType::Bool => bool_of(value).ok_or_else(|| EncodeError::WrongKind {
            data_type: point.data_type,
            expected: "true or false",
            given: value.to_string(),
        }),
        other => Err(EncodeError::WrongKind {
            data_type: other,
            expected: "a register, not a coil",
            given: value.to_string(),
        }),
    }
}

fn bool_of(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Int(0) | Value::UInt(0) => Some(false),
        Value::Int(1) | Value::UInt(1) => Some(true),
        _ => None,
    }
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        Value::Bool(_) | Value::Text(_) => None,
    }
}

fn integer_range(data_type: DataType) -> (i128, i128) {
    match data_type {
        DataType::U16 => (0, u16::MAX.into()),
        DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::U32 => (0, u32::MAX.into()),
        DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::U64 => (0, u64::MAX.into()),
        DataType::I64 => (i64::MIN.into(), i64::MAX.into()),
        // Bool, floats and text are never integers here.
        _ => (0, 0),
    }
}

/// `(v - offset) / scale` as a whole raw number, or why it is not one. Float noise of the
/// division (21.5 / 0.1 = 214.99999999999997) is not a step: the tolerance is a millionth
/// of a step, widened to the precision of an f64 for very large raw values.
fn whole_steps(point: &Point, v: f64) -> Result<i128, EncodeError> {
    if !v.is_finite() {
        return Err(EncodeError::NotFinite(v));
    }
    let raw = (v - point.offset) / point.scale;
    if !raw.is_finite() || raw.abs() >= 2f64.powi(100) {
        let (min, max) = integer_range(point.data_type);
        return Err(EncodeError::OutOfRange {
            data_type: point.data_type,
            value: v,
            min: min as f64 * point.scale + point.offset,
            max: max as f64 * point.scale + point.offset,
        });
    }
    let nearest = raw.round();
    let tolerance = (raw.abs() * 4.0 * f64::EPSILON).max(1e-6);
    if (raw - nearest).abs() > tolerance {
        let (lo, hi) = (raw.floor(), raw.ceil());
        let at = |r: f64| r * point.scale + point.offset;
        let (a, b) = (at(lo), at(hi));
        return Err(EncodeError::BetweenSteps {
            value: v,
            step: point.scale,
            offset: point.offset,
            below: a.min(b),
            above: a.max(b),
        });
    }
    Ok(nearest as i128)
}

fn encode_float(point: &Point, v: f64) -> Result<Vec<u16>, EncodeError> {
    if !v.is_finite() {
        return Err(EncodeError::NotFinite(v));
    }
    let raw = (v - point.offset) / point.scale;
    let read_back = |raw_back: f64| {
        if point.scale == 1.0 && point.offset == 0.0 {
            raw_back
        } else {
            raw_back * point.scale + point.offset
        }
    };
    // What reads back must be what was asked, up to the rounding of the scaling itself.
    let same = |back: f64| back == v || (back - v).abs() <= 8.0 * f64::EPSILON * v.abs();
    match point.data_type {
        DataType::F32 => {
            let narrowed = raw as f32;
            if !narrowed.is_finite() {
                return Err(EncodeError::OutOfRange {
                    data_type: DataType::F32,
                    value: v,
                    min: read_back(f64::from(f32::MIN)),
                    max: read_back(f64::from(f32::MAX)),
                });
            }
            let back = read_back(widen_f32(narrowed));
            if !same(back) {
                return Err(EncodeError::NotAnF32 {
                    value: v,
                    read_back: back,
                });
            }
            Ok(to_wire(&narrowed.to_be_bytes(), point.order))
        }
        _ => {
            if !raw.is_finite() {
                return Err(EncodeError::NotFinite(v));
            }
            Ok(to_wire(&raw.to_be_bytes(), point.order))
        }
    }
}

fn encode_text(text: &str, registers: u16, order: WordOrder) -> Result<Vec<u16>, EncodeError> {
    let bytes = usize::from(registers) * 2;
    if text.len() > bytes {
        return Err(EncodeError::TextTooLong {
            text: text.to_owned(),
            bytes,
        });
    }
    if text.contains('\0') || text.trim_matches(' ') != text {
        return Err(EncodeError::TextNotReadBack(text.to_owned()));
    }
    let low_first = matches!(order, WordOrder::Badc | WordOrder::Dcba);
    let mut padded = text.as_bytes().to_vec();
    padded.resize(bytes, 0);
    Ok(padded
        .chunks_exact(2)
        .map(|pair| {
            let (hi, lo) = if low_first {
                (pair[1], pair[0])
            } else {
                (pair[0], pair[1])
            };
            u16::from_be_bytes([hi, lo])
        })
        .collect())
}

/// The wire words of a value given by its big-endian bytes: the inverse of [`ordered`]
/// (each order is its own inverse, so the same permutation applies).
fn to_wire(be: &[u8], order: WordOrder) -> Vec<u16> {
    let words: Vec<u16> = be
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let bytes: Vec<u8> = match be.len() {
        2 => ordered::<2>(&words, order).to_vec(),
        4 => ordered::<4>(&words, order).to_vec(),
        _ => ordered::<8>(&words, order).to_vec(),
    };
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}
