//! Plain data shared by the pollers and the uplink. No I/O, no protocol code.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A decoded, scaled value of one point.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    /// Signed integers, and unsigned ones that fit (scale 1, offset 0).
    Int(i64),
    /// Unsigned 64-bit values above `i64::MAX`.
    UInt(u64),
    /// Floats, and any integer point with a scale or offset.
    Float(f64),
    Text(String),
}

/// As logs and error messages show a value: `true`, `42`, `21.5`, `"text"` (quoted, so an
/// empty or padded string is visible).
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Why a point has no value: it could not be read. A reading carries it in place of a value
/// when the point turns bad; `uplink::topic` encodes it, in one place per payload mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// No reply within the response timeout: a register block the device never answers, or
    /// always answers too late.
    Timeout,
    /// The device answered the read with this Modbus exception code (2: illegal data
    /// address, 6: busy…). The device is alive; this point is not readable now.
    Exception(u8),
    /// The answer (or a serial line) held no valid value for the point's type.
    Decode,
    /// A serial_line sensor sent no good line within `stale_after`.
    Stale,
    /// The replies to this read were no valid answer, also when asked again (line noise, a
    /// wrong baud rate or parity, two units with the same id).
    Garbled,
    /// The device or gateway closed or reset the connection on this read, also on a fresh
    /// connection.
    Disconnected,
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quality::Timeout => f.write_str("no reply within the timeout"),
            Quality::Exception(code) => write!(
                f,
                "the device refused the read with exception {code} ({})",
                exception_name(*code)
            ),
            Quality::Decode => f.write_str("the answer holds no valid value for the point"),
            Quality::Stale => f.write_str("no good line from the sensor for stale_after"),
            Quality::Garbled => f.write_str("the replies were garbled"),
            Quality::Disconnected => f.write_str("the device closed the connection on this read"),
        }
    }
}

/// The Modbus spec's name for an exception code, in words.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address: the device does not map these registers",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// One reading of one point, as the poller produced it: a value, or why there is none.
/// A bad point is sent once, when it turns bad (or its cause changes), not at every poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Arc<str>,
    pub point: Arc<str>,
    pub value: Result<Value, Quality>,
    pub unit: Option<Arc<str>>,
    /// Wall-clock time of the poll that produced it, in unix milliseconds.
    pub ts_ms: u64,
}

/// What a bus task reports upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Reading(Reading),
    /// A device started (`true`) or stopped (`false`) answering.
    DeviceAvailability {
        device: Arc<str>,
        online: bool,
    },
    /// The device's poll (one interval group, or one accepted line of a serial sensor, or a
    /// serial sensor going stale) ended: the readings sent since belong together.
    /// Device-batched payloads publish on it; other modes ignore it. Sent after every poll,
    /// also one that failed part-way.
    PollDone {
        device: Arc<str>,
    },
    /// A point's value read back right after a write: published at once, past any deadband,
    /// and it replaces the point's value in a poll batch that was read before the write.
    WrittenValue(Reading),
    /// The answer to one command, on `…/<device>/<point>/set/result`: `result` is its JSON,
    /// made by `writes::payload`.
    CommandResult {
        device: Arc<str>,
        point: Arc<str>,
        result: Vec<u8>,
    },
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where bus tasks deliver their samples. Implemented by the uplink's publisher; must never
/// block (a slow or dead link must not slow the buses down).
pub trait SampleSink: Send + Sync {
    fn send(&self, sample: Sample);
}

/// Where the uplink hands a command it received on `<prefix>/<device>/<point>/set`.
/// Implemented by the command router (`writes::router`); must never block the link.
pub trait CommandSink: Send + Sync {
    /// `retained`: the broker delivered it as a retained message (it was there before we
    /// subscribed), which must not run.
    fn command(&self, device: &str, point: &str, payload: &[u8], retained: bool);
}
