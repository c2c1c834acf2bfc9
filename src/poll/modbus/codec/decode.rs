//! Reading: registers and bits into values, scaled.

use super::order::ordered;
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
    if !v.is_finite() {
        return f64::from(v);
    }
    // Through a buffer on the stack: this runs for every f32 reading. `{:e}` prints the same
    // shortest digits as `{}`, in at most 15 bytes (`-1.1754944e-38`) where `{}` of a tiny
    // or huge f32 takes up to 47.
    let mut text = StackText::default();
    match std::fmt::Write::write_fmt(&mut text, format_args!("{v:e}")) {
        Ok(()) => text.as_str().parse().unwrap_or(f64::from(v)),
        Err(_) => f64::from(v),
    }
}

/// A short text formatted without allocating; a write past its end fails.
#[derive(Default)]
struct StackText {
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
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
