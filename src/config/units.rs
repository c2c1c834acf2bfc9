//! Values with units, as written in the config file: durations ("15s", "500ms"), sizes
//! ("64MiB") and Modbus register addresses in the classic 5/6-digit notation ("40001").
//!
//! Owns only the text-to-value conversions and their error sentences; it knows nothing about
//! where in the file a value sits (the validator adds file, line and column).

use std::fmt;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Visitor};

use super::types::Table;

/// Parses a duration that carries its unit, such as "15s", "500ms", "2m" or "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the duration is empty: write a number with a unit, e.g. \"15s\"".into());
    }
    if trimmed.parse::<f64>().is_ok() {
        return Err(format!(
            "\"{trimmed}\" has no unit: write \"{trimmed}s\" or \"{trimmed}ms\""
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("\"{trimmed}\" is not a duration ({e}): write a number with a unit, e.g. \"15s\", \"500ms\" or \"2m\"")
    })
}

/// Parses a size that carries its unit, such as "64MiB", "512KiB" or "1GB".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the size is empty: write a number with a unit, e.g. \"64MiB\"".into());
    }
    if trimmed.parse::<f64>().is_ok() {
        return Err(format!(
            "\"{trimmed}\" has no unit: write \"{trimmed}B\", \"{trimmed}KiB\" or \"{trimmed}MiB\""
        ));
    }
    trimmed
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| {
            format!("\"{trimmed}\" is not a size ({e}): write a number with a unit, e.g. \"64MiB\"")
        })
}

/// Renders a duration the way a user would write it in the file.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A duration as written in the file; a bare number is refused with a hint to add a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as \"15s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "the number {v} has no unit: write it as a string with a unit, e.g. \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_i64(v.min(i64::MAX as u64) as i64)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "the number {v} has no unit: write it as a string with a unit, e.g. \"{v}s\""
                )))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A size as written in the file ("64MiB"); a bare number is refused with a hint to add a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = HumanSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size with a unit, such as \"64MiB\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(HumanSize).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "the number {v} has no unit: write it as a string with a unit, e.g. \"{v}B\" or \"{v}MiB\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_i64(v.min(i64::MAX as u64) as i64)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A deadband as written: a number is absolute (in the point's unit), a string ending in `%`
/// is relative to the last published value. Range checks are the validator's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeadbandText {
    Absolute(f64),
    Percent(f64),
}

/// Parses `"2%"` or `"0.5 %"`; a string without `%` is refused with the two ways to write it.
pub fn parse_deadband(text: &str) -> Result<DeadbandText, String> {
    let trimmed = text.trim();
    match trimmed.strip_suffix('%') {
        Some(number) => number
            .trim()
            .parse::<f64>()
            .map(DeadbandText::Percent)
            .map_err(|_| format!("\"{trimmed}\" is not a percentage: write e.g. \"2%\"")),
        None => Err(format!(
            "\"{trimmed}\" is a string without `%`: write an absolute deadband as a number \
             (deadband = 0.5) or a relative one as a percentage (deadband = \"2%\")"
        )),
    }
}

impl<'de> Deserialize<'de> for DeadbandText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeadbandVisitor;
        impl Visitor<'_> for DeadbandVisitor {
            type Value = DeadbandText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number (absolute, such as 0.5) or a percentage (such as \"2%\")")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(DeadbandText::Absolute(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(DeadbandText::Absolute(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(DeadbandText::Absolute(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_deadband(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DeadbandVisitor)
    }
}

/// A Modbus address as written: an integer is a 0-based protocol address, a string is the
/// classic 1-based notation whose first digit names the table ("40001" = holding 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressText {
    Protocol(i64),
    Notation(String),
}

impl<'de> Deserialize<'de> for AddressText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressVisitor;
        impl Visitor<'_> for AddressVisitor {
            type Value = AddressText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 0-based address (an integer such as 0 or 0x10) or the classic notation as a string (such as \"40001\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(AddressText::Protocol(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(AddressText::Protocol(v.min(i64::MAX as u64) as i64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AddressText::Notation(v.to_owned()))
            }
        }
        deserializer.deserialize_any(AddressVisitor)
    }
}

/// The table a notation's first digit names; `None` for 0xxxx, which is ambiguous (a leading
/// zero is often dropped, so "1" could be coil 0 or a plain address) and needs `table`.
fn notation_table(digit: u8) -> Option<Table> {
    match digit {
        b'1' => Some(Table::Discrete),
        b'3' => Some(Table::Input),
        b'4' => Some(Table::Holding),
        _ => None,
    }
}

fn table_digit(table: Table) -> char {
    match table {
        Table::Coil => '0',
        Table::Discrete => '1',
        Table::Input => '3',
        Table::Holding => '4',
    }
}

/// The classic notation of a 0-based address, for messages ("holding 0" -> "40001").
pub fn notation_of(table: Table, address: u16) -> String {
    let number = u32::from(address) + 1;
    if number <= 9999 {
        format!("{}{number:04}", table_digit(table))
    } else {
        format!("{}{number:05}", table_digit(table))
    }
}

/// Converts a 5-digit ("40001") or 6-digit ("400001") notation into a table and a 0-based
/// address. `declared` is the `table` key, if any: it must agree with the first digit, and it
/// is required for the 0xxxx coil notation.
pub fn parse_notation(text: &str, declared: Option<Table>) -> Result<(Table, u16), String> {
    let digits = text.trim();
    let shape_error = || {
        format!(
            "address \"{digits}\" is not in the classic notation: write 5 or 6 digits whose first digit names the table \
             (\"40001\" = holding 0, \"30001\" = input 0, \"10001\" = discrete 0, \"00001\" = coil 0 with table = \"coil\"), \
             or give a 0-based integer address with `table`"
        )
    };
    if !(digits.len() == 5 || digits.len() == 6) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(shape_error());
    }
    let first = digits.as_bytes()[0];
    let number: u32 = digits[1..].parse().map_err(|_| shape_error())?;
    let table = match (first, notation_table(first), declared) {
        (b'0', _, Some(Table::Coil)) => Table::Coil,
        (b'0', _, Some(other)) => {
            return Err(format!(
                "address \"{digits}\" is in the coil notation (0xxxx) but table = \"{}\": \
                 use the notation of that table or a 0-based integer address",
                table_name(other)
            ))
        }
        (b'0', _, None) => {
            return Err(format!(
                "address \"{digits}\" is in the coil notation (0xxxx), which is ambiguous on its own: add table = \"coil\""
            ))
        }
        (_, None, _) => return Err(shape_error()),
        (_, Some(named), Some(declared)) if named != declared => {
            return Err(format!(
                "address \"{digits}\" names the {} table but table = \"{}\": make them agree, \
                 or give a 0-based integer address",
                table_name(named),
                table_name(declared)
            ))
        }
        (_, Some(named), _) => named,
    };
    let max = if digits.len() == 5 { 9999 } else { 65536 };
    if number == 0 || number > max {
        return Err(format!(
            "address \"{digits}\" is out of range: the notation counts from 1, so it must lie between \"{f}{one}\" and \"{f}{max}\"",
            f = first as char,
            one = if digits.len() == 5 { "0001" } else { "00001" },
        ));
    }
    let address = u16::try_from(number - 1).map_err(|_| shape_error())?;
    Ok((table, address))
}

/// The word used for a table in the file.
pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Coil => "coil",
        Table::Discrete => "discrete",
        Table::Input => "input",
        Table::Holding => "holding",
    }
}

/// The shortest silence between two RTU frames the Modbus serial line spec allows (t3.5):
/// 3.5 character times, where a character is start + data + parity + stop bits. Above
/// 19200 baud the spec fixes it at 1.75 ms.
pub fn rtu_min_silence(baud: u32, data_bits: u8, parity: bool, stop_bits: u8) -> Duration {
    if baud > 19_200 {
        return Duration::from_micros(1750);
    }
    let bits_per_char = 1 + u64::from(data_bits) + u64::from(parity) + u64::from(stop_bits);
    let micros = (35 * bits_per_char * 1_000_000).div_ceil(10 * u64::from(baud.max(1)));
    Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units_parse() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 20ms "), Ok(Duration::from_millis(20)));
    }

    #[test]
    fn a_duration_without_a_unit_says_to_add_one() {
        let err = parse_duration("15").unwrap_err();
        assert!(err.contains("no unit") && err.contains("\"15s\""), "{err}");
    }

    #[test]
    fn a_garbled_duration_is_refused_with_an_example() {
        let err = parse_duration("fifteen seconds").unwrap_err();
        assert!(
            err.contains("not a duration") && err.contains("\"15s\""),
            "{err}"
        );
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_with_units_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("10B"), Ok(10));
    }

    #[test]
    fn a_size_without_a_unit_says_to_add_one() {
        let err = parse_size("1024").unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn five_digit_notation_names_the_table_and_counts_from_one() {
        assert_eq!(parse_notation("40001", None), Ok((Table::Holding, 0)));
        assert_eq!(parse_notation("30001", None), Ok((Table::Input, 0)));
        assert_eq!(parse_notation("30343", None), Ok((Table::Input, 342)));
        assert_eq!(parse_notation("10001", None), Ok((Table::Discrete, 0)));
        assert_eq!(parse_notation("49999", None), Ok((Table::Holding, 9998)));
    }

    #[test]
    fn six_digit_notation_reaches_the_whole_address_space() {
        assert_eq!(parse_notation("400001", None), Ok((Table::Holding, 0)));
        assert_eq!(parse_notation("465536", None), Ok((Table::Holding, 65535)));
        assert_eq!(parse_notation("300100", None), Ok((Table::Input, 99)));
    }

    #[test]
    fn coil_notation_needs_the_table() {
        assert!(parse_notation("00001", None)
            .unwrap_err()
            .contains("table = \"coil\""));
        assert_eq!(
            parse_notation("00001", Some(Table::Coil)),
            Ok((Table::Coil, 0))
        );
        assert!(parse_notation("00001", Some(Table::Holding)).is_err());
    }

    #[test]
    fn notation_and_table_must_agree() {
        assert_eq!(
            parse_notation("40001", Some(Table::Holding)),
            Ok((Table::Holding, 0))
        );
        let err = parse_notation("40001", Some(Table::Input)).unwrap_err();
        assert!(err.contains("holding") && err.contains("input"), "{err}");
    }

    #[test]
    fn malformed_notations_are_refused() {
        for bad in [
            "40000", "4001", "4000001", "50001", "2000a", "466537", "400000",
        ] {
            assert!(parse_notation(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn notation_round_trips_for_messages() {
        assert_eq!(notation_of(Table::Holding, 0), "40001");
        assert_eq!(notation_of(Table::Input, 342), "30343");
        assert_eq!(notation_of(Table::Holding, 65535), "465536");
    }

    #[test]
    fn rtu_silence_is_three_and_a_half_characters() {
        // 9600 8N1: 10 bits per character, 3.5 chars = 35 bits = 3.646 ms.
        assert_eq!(
            rtu_min_silence(9600, 8, false, 1),
            Duration::from_micros(3646)
        );
        // 9600 8E1: 11 bits.
        assert_eq!(
            rtu_min_silence(9600, 8, true, 1),
            Duration::from_micros(4011)
        );
        // Fixed above 19200 baud.
        assert_eq!(
            rtu_min_silence(115_200, 8, false, 1),
            Duration::from_micros(1750)
        );
        assert!(rtu_min_silence(1200, 8, false, 1) > Duration::from_millis(20));
    }
}
