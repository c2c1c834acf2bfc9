//! From one text line to point values: device selection (filter, checksum) and per-point
//! extraction (regex capture or delimited field) with numeric conversion.
//!
//! Pure functions over validated config and a line of text; no I/O, no clock, no samples.
//! Must not panic on any line: every failure is a value the caller counts or prints.

use crate::config::{Extract, LineValueKind, SerialLineDevice, SerialLinePoint};
use crate::model::Value;

use super::checksum::{scheme, ChecksumError};

/// What a line means to one device.
#[derive(Debug, PartialEq)]
pub enum Selection<'a> {
    /// The device's filter does not match: the line belongs to someone else (or nobody).
    NotForDevice,
    BadChecksum(ChecksumError),
    /// The line is the device's; its text without any checksum suffix.
    Accepted(&'a str),
}

pub fn select<'a>(device: &SerialLineDevice, line: &'a str) -> Selection<'a> {
    if let Some(filter) = &device.filter {
        if !filter.is_match(line) {
            return Selection::NotForDevice;
        }
    }
    match device.checksum {
        None => Selection::Accepted(line),
        Some(kind) => match scheme(kind).verify(line) {
            Ok(payload) => Selection::Accepted(payload),
            Err(e) => Selection::BadChecksum(e),
        },
    }
}

/// Why a point has no value in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    /// The regex did not match, or the line has too few fields.
    NotFound,
    /// The text is there but empty (e.g. an NMEA field before the first fix).
    Empty,
    NotANumber(String),
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtractError::NotFound => write!(f, "not found in the line"),
            ExtractError::Empty => write!(f, "empty"),
            ExtractError::NotANumber(t) => write!(f, "{t:?} is not a number"),
        }
    }
}

/// The point's text in `payload`, before conversion.
pub fn locate<'a>(point: &SerialLinePoint, payload: &'a str) -> Result<&'a str, ExtractError> {
    match &point.extract {
        Extract::Regex { regex, capture } => regex
            .captures(payload)
            .and_then(|c| c.name(capture))
            .map(|m| m.as_str())
            .ok_or(ExtractError::NotFound),
        Extract::Field { delimiter, index } => payload
            .split(delimiter.as_str())
            .nth(*index)
            .ok_or(ExtractError::NotFound),
    }
}

/// The point's value in `payload`.
pub fn extract(point: &SerialLinePoint, payload: &str) -> Result<Value, ExtractError> {
    convert(point, locate(point, payload)?)
}

pub fn convert(point: &SerialLinePoint, text: &str) -> Result<Value, ExtractError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ExtractError::Empty);
    }
    let not_a_number = || ExtractError::NotANumber(text.chars().take(40).collect());
    let scaled = |v: f64| {
        let v = v * point.scale + point.offset;
        if v.is_finite() {
            Ok(Value::Float(v))
        } else {
            Err(not_a_number())
        }
    };
    match point.kind {
        LineValueKind::String => Ok(Value::Text(text.to_owned())),
        LineValueKind::Integer => {
            let n: i64 = text.parse().map_err(|_| not_a_number())?;
            if point.scale == 1.0 && point.offset == 0.0 {
                Ok(Value::Int(n))
            } else {
                scaled(n as f64)
            }
        }
        LineValueKind::Number => {
            // Rust's parser also takes "inf" and "NaN": a sensor never means those.
            if !text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
            {
                return Err(not_a_number());
            }
            let v: f64 = text.parse().map_err(|_| not_a_number())?;
            scaled(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChecksumKind;
    use std::time::Duration;

    fn field(name: &str, index: usize, kind: LineValueKind) -> SerialLinePoint {
        SerialLinePoint {
            name: name.into(),
            extract: Extract::Field {
                delimiter: ",".into(),
                index,
            },
            kind,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    fn gps() -> SerialLineDevice {
        SerialLineDevice {
            query: None,
            filter: Some(regex::Regex::new(r"^\$GPGGA,").unwrap()),
            checksum: Some(ChecksumKind::Nmea),
            stale_after: Duration::from_secs(3),
            points: vec![
                field("fix", 6, LineValueKind::Integer),
                field("satellites", 7, LineValueKind::Integer),
                field("altitude", 9, LineValueKind::Number),
                field("geoid_units", 12, LineValueKind::String),
                field("dgps_station", 14, LineValueKind::Integer),
            ],
        }
    }

    const GGA: &str = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";

    #[test]
    fn a_gga_sentence_gives_fix_satellites_and_altitude() {
        let device = gps();
        let Selection::Accepted(payload) = select(&device, GGA) else {
            panic!("rejected");
        };
        let values: Vec<_> = device.points.iter().map(|p| extract(p, payload)).collect();
        assert_eq!(
            values,
            vec![
                Ok(Value::Int(1)),
                Ok(Value::Int(8)),
                Ok(Value::Float(545.4)),
                Ok(Value::Text("M".into())),
                // The last field is empty, not "*47": the checksum was split off.
                Err(ExtractError::Empty),
            ]
        );
    }

    #[test]
    fn other_sentences_are_not_for_the_device_and_bad_sums_are_caught() {
        let device = gps();
        assert_eq!(
            select(&device, "$GPRMC,123519,A*00"),
            Selection::NotForDevice
        );
        assert!(matches!(
            select(&device, &GGA.replace("*47", "*48")),
            Selection::BadChecksum(_)
        ));
    }

    #[test]
    fn regex_captures_scale_and_reject_non_numbers() {
        let point = SerialLinePoint {
            name: "t".into(),
            extract: Extract::Regex {
                regex: regex::Regex::new(r"T=(?P<value>\S+)").unwrap(),
                capture: "value".into(),
            },
            kind: LineValueKind::Number,
            scale: 0.1,
            offset: -1.0,
            unit: Some("C".into()),
        };
        assert_eq!(extract(&point, "T=215 H=40"), Ok(Value::Float(20.5)));
        assert!(matches!(
            extract(&point, "T=inf"),
            Err(ExtractError::NotANumber(_))
        ));
        assert_eq!(extract(&point, "H=40"), Err(ExtractError::NotFound));
        let mut int = field("n", 0, LineValueKind::Integer);
        assert_eq!(extract(&int, "+12"), Ok(Value::Int(12)));
        int.scale = 2.0;
        assert_eq!(extract(&int, "12"), Ok(Value::Float(24.0)));
        assert_eq!(extract(&int, " ,x"), Err(ExtractError::Empty));
    }
}
