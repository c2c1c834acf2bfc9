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

/// One good reading of one point, as the poller produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Arc<str>,
    pub point: Arc<str>,
    pub value: Value,
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
    /// The device's poll (one interval group, or one accepted line of a serial sensor) ended:
    /// the readings sent since belong together. Device-batched payloads publish on it; other
    /// modes ignore it. Sent after every poll, also one that failed part-way.
    PollDone {
        device: Arc<str>,
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
