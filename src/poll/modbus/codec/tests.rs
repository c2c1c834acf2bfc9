//! The codec both ways: decoding against independent encoders, encoding against the
//! same, and round trips.

use super::*;
use crate::config::{DataType, Point, Table, WordOrder};
use crate::model::Value;

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

// --- writes: the same codec the other way round ---

fn encode(data_type: DataType, order: WordOrder, s: f64, o: f64, v: Value) -> Vec<u16> {
    encode_registers(&point(data_type, order, s, o), &v)
        .unwrap_or_else(|e| panic!("{v:?} as {data_type:?} {order:?}: {e}"))
}

#[test]
fn every_integer_type_encodes_like_an_independent_encoder_in_every_order() {
    for order in ORDERS {
        for v in [0u16, 1, 0x1234, 0xFFFF] {
            let got = encode(DataType::U16, order, 1.0, 0.0, Value::Int(v.into()));
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "u16 {v} {order:?}"
            );
        }
        for v in [0i16, -1, -12345, i16::MIN, i16::MAX] {
            let got = encode(DataType::I16, order, 1.0, 0.0, Value::Int(v.into()));
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "i16 {v} {order:?}"
            );
        }
        for v in [0u32, 0x1234_5678, u32::MAX] {
            let got = encode(DataType::U32, order, 1.0, 0.0, Value::Int(v.into()));
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "u32 {v} {order:?}"
            );
        }
        for v in [0i32, -2, -0x1234_5678, i32::MIN, i32::MAX] {
            let got = encode(DataType::I32, order, 1.0, 0.0, Value::Int(v.into()));
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "i32 {v} {order:?}"
            );
        }
        for v in [0u64, 0x0102_0304_0506_0708, u64::MAX - 5] {
            let value = i64::try_from(v).map_or(Value::UInt(v), Value::Int);
            let got = encode(DataType::U64, order, 1.0, 0.0, value);
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "u64 {v} {order:?}"
            );
        }
        for v in [0i64, -3, -0x0102_0304_0506_0708, i64::MIN, i64::MAX] {
            let got = encode(DataType::I64, order, 1.0, 0.0, Value::Int(v));
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "i64 {v} {order:?}"
            );
        }
        for v in [0.0f32, -273.15, 21.5, f32::MAX] {
            let value = Value::Float(widen_f32(v));
            let got = encode(DataType::F32, order, 1.0, 0.0, value);
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "f32 {v} {order:?}"
            );
        }
        for v in [0.0f64, -123456.789, 1e300] {
            let got = encode(DataType::F64, order, 1.0, 0.0, Value::Float(v));
            assert_eq!(
                got,
                wire_words(&v.to_be_bytes(), order),
                "f64 {v} {order:?}"
            );
        }
    }
}

#[test]
fn a_written_value_reads_back_as_itself_through_scale_and_offset() {
    let cases: [(DataType, f64, f64, &[f64]); 7] = [
        (DataType::U16, 0.1, 0.0, &[0.0, 21.5, 6553.5]),
        (DataType::I16, 0.1, -40.0, &[-40.0, 21.5, -3316.8, 3236.7]),
        (DataType::U32, 0.01, 0.0, &[123456.78, 0.01]),
        (DataType::I32, 0.001, 0.0, &[-1.234, 2147483.647]),
        (DataType::I64, 0.5, 10.0, &[10.5, -1e6]),
        (DataType::F32, 1.0, 0.0, &[21.5, 0.1, -273.15, 3.4e38]),
        (DataType::F64, 0.1, 5.0, &[21.5, -0.3]),
    ];
    for order in ORDERS {
        for (data_type, s, o, values) in cases {
            let p = point(data_type, order, s, o);
            for &v in values {
                let words = encode_registers(&p, &Value::Float(v))
                    .unwrap_or_else(|e| panic!("{v} as {data_type:?} x{s}+{o}: {e}"));
                let back = decode_registers(&p, &words).unwrap();
                let Value::Float(back) = back else {
                    panic!("{back:?}")
                };
                assert!(
                    (back - v).abs() <= 1e-9 * v.abs().max(1.0),
                    "{v} as {data_type:?} x{s}+{o} {order:?} reads back as {back}"
                );
            }
        }
    }
}

#[test]
fn a_value_between_two_raw_steps_is_refused_naming_its_neighbours() {
    let p = point(DataType::I16, WordOrder::Abcd, 0.1, 0.0);
    match encode_registers(&p, &Value::Float(21.55)) {
        Err(EncodeError::BetweenSteps { below, above, .. }) => {
            assert!((below - 21.5).abs() < 1e-9 && (above - 21.6).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    let whole = point(DataType::U16, WordOrder::Abcd, 1.0, 0.0);
    assert!(matches!(
        encode_registers(&whole, &Value::Float(2.5)),
        Err(EncodeError::BetweenSteps { .. })
    ));
}

#[test]
fn a_value_out_of_the_types_range_is_refused_never_clamped() {
    let refused = |data_type, s, v: Value| {
        let p = point(data_type, WordOrder::Abcd, s, 0.0);
        assert!(
            matches!(
                encode_registers(&p, &v),
                Err(EncodeError::OutOfRange { .. })
            ),
            "{v:?} as {data_type:?} x{s}"
        );
    };
    refused(DataType::U16, 1.0, Value::Int(65536));
    refused(DataType::U16, 1.0, Value::Int(-1));
    refused(DataType::I16, 1.0, Value::Int(32768));
    refused(DataType::U16, 0.1, Value::Float(6553.6));
    refused(DataType::U32, 1.0, Value::Int(-5));
    refused(DataType::I64, 1.0, Value::UInt(u64::MAX));
    refused(DataType::F32, 1.0, Value::Float(1e39));
    refused(DataType::U16, 1.0, Value::Float(1e300));
}

#[test]
fn an_f32_point_refuses_a_value_it_would_read_back_differently() {
    let p = point(DataType::F32, WordOrder::Abcd, 1.0, 0.0);
    match encode_registers(&p, &Value::Float(0.123456789)) {
        Err(EncodeError::NotAnF32 { read_back, .. }) => assert_eq!(read_back, 0.12345679),
        other => panic!("{other:?}"),
    }
    for bad in [f64::NAN, f64::INFINITY] {
        assert!(matches!(
            encode_registers(&p, &Value::Float(bad)),
            Err(EncodeError::NotFinite(_))
        ));
    }
}

#[test]
fn wrong_kinds_are_refused_and_bools_take_true_false_or_0_1() {
    let number = point(DataType::U16, WordOrder::Abcd, 1.0, 0.0);
    assert!(matches!(
        encode_registers(&number, &Value::Text("21".into())),
        Err(EncodeError::WrongKind { .. })
    ));
    assert!(encode_registers(&number, &Value::Bool(true)).is_err());
    let flag = point(DataType::Bool, WordOrder::Abcd, 1.0, 0.0);
    assert_eq!(encode_registers(&flag, &Value::Bool(true)).unwrap(), [1]);
    assert_eq!(encode_bit(&flag, &Value::Int(0)), Ok(false));
    assert_eq!(encode_bit(&flag, &Value::Bool(true)), Ok(true));
    assert!(encode_bit(&flag, &Value::Int(2)).is_err());
    assert!(encode_bit(&number, &Value::Int(1)).is_err());
}

#[test]
fn text_is_padded_with_nuls_in_the_points_byte_order_and_reads_back() {
    for order in ORDERS {
        let p = point(DataType::String { registers: 4 }, order, 1.0, 0.0);
        let words = encode_registers(&p, &Value::Text("SN-42".into())).unwrap();
        assert_eq!(words.len(), 4);
        assert_eq!(
            decode_registers(&p, &words).unwrap(),
            Value::Text("SN-42".into())
        );
    }
    let p = point(DataType::String { registers: 2 }, WordOrder::Abcd, 1.0, 0.0);
    assert!(matches!(
        encode_registers(&p, &Value::Text("toolong".into())),
        Err(EncodeError::TextTooLong { bytes: 4, .. })
    ));
    assert!(matches!(
        encode_registers(&p, &Value::Text(" x".into())),
        Err(EncodeError::TextNotReadBack(_))
    ));
}

proptest::proptest! {
    /// Whatever a device holds, writing back the value it was read as puts the same
    /// registers on the wire: decode and encode are inverses over every raw value.
    #[test]
    fn any_register_contents_survive_a_read_then_a_write(
        words in proptest::collection::vec(proptest::prelude::any::<u16>(), 4),
        type_index in 0usize..8,
        order_index in 0usize..4,
        scaled in proptest::prelude::any::<bool>(),
    ) {
        let data_type = [
            DataType::U16, DataType::I16, DataType::U32, DataType::I32,
            DataType::U64, DataType::I64, DataType::F32, DataType::F64,
        ][type_index];
        let (s, o) = if scaled { (0.5, -40.0) } else { (1.0, 0.0) };
        let p = point(data_type, ORDERS[order_index], s, o);
        let width = usize::from(data_type.width());
        let value = decode_registers(&p, &words).unwrap();
        let finite = match value {
            Value::Float(f) => f.is_finite() && f != 0.0,
            _ => true,
        };
        // Scaling can make two raw values read alike: a 64-bit integer above 2^53 has no
        // exact f64, and a tiny float plus an offset of -40 reads as -40. The property
        // holds where the reading identifies the raw value.
        let float = matches!(data_type, DataType::F32 | DataType::F64);
        let exact = !scaled || (width < 4 && !float);
        if finite && exact {
            let written = encode_registers(&p, &value);
            proptest::prop_assert_eq!(written, Ok(words[..width].to_vec()));
        }
    }
}

#[test]
fn widening_an_f32_keeps_its_shortest_decimal_form_at_every_magnitude() {
    let extremes = [
        0.0f32,
        -0.0,
        230.1,
        -273.15,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(1),
        1e30,
        1e-30,
    ];
    // Every exponent, with a spread of mantissas.
    let sweep = (0..=0xffu32).flat_map(|exp| {
        [0u32, 1, 0x40_0000, 0x7f_ffff, 0x12_3457].map(|m| f32::from_bits(exp << 23 | m))
    });
    for v in extremes.into_iter().chain(sweep).filter(|v| v.is_finite()) {
        let by_text: f64 = v.to_string().parse().unwrap();
        let widened = widen_f32(v);
        assert_eq!(widened.to_bits(), by_text.to_bits(), "{v:e}");
        assert_eq!(widened as f32, v, "{v:e} narrows back");
    }
    assert!(widen_f32(f32::NAN).is_nan());
    assert_eq!(widen_f32(f32::INFINITY), f64::INFINITY);
}
