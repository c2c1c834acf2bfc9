//! Serial-line sensors: ASCII lines streamed by, or asked of, a device on a serial port
//! (NMEA GPS, weather stations, scales, gas analysers).
//!
//! Owns the `serial_line` bus task ([`run_serial_line_bus`]), its framing (`codec`), line
//! selection and point extraction (`extract`), checksums (`checksum`), the port lifecycle
//! (open, flush, lose, reopen: `source`), and the per-bus counters ([`SerialLineCounters`]).
//! Hands readings and availability to a [`SampleSink`](crate::model::SampleSink); never
//! touches MQTT, the disk or the Modbus code.
//!
//! Counters for the health topic: every bus task keeps a [`SerialLineCounters`] in a
//! process-wide registry under its bus name. Read them with [`all_counters`] (a snapshot of
//! every serial_line bus) or [`counters`]`(bus).snapshot()`. They only grow.

pub mod checksum;
pub mod codec;
pub mod extract;
mod source;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use source::{read_serial_line_once, run_serial_line_bus};

/// What a serial_line bus has seen go wrong (and right), for the health topic.
#[derive(Debug, Default)]
pub struct SerialLineCounters {
    pub lines: AtomicU64,
    /// Lines that were not text (invalid UTF-8, control characters: noise, wrong baud).
    pub garbage: AtomicU64,
    /// Lines longer than `max_line`.
    pub overlong: AtomicU64,
    pub bad_checksum: AtomicU64,
    /// Points that found no value in a line that was theirs (no match, empty, not a number).
    pub unparsed: AtomicU64,
    /// Queries that got no answer within `response_timeout`.
    pub no_answer: AtomicU64,
    /// Lines no device wanted: other sentences, late answers, echoes.
    pub ignored: AtomicU64,
    /// Times the port was lost (read error, hang-up, node gone or replaced).
    pub port_lost: AtomicU64,
}

/// A plain copy of [`SerialLineCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SerialLineCounts {
    pub lines: u64,
    pub garbage: u64,
    pub overlong: u64,
    pub bad_checksum: u64,
    pub unparsed: u64,
    pub no_answer: u64,
    pub ignored: u64,
    pub port_lost: u64,
}

impl SerialLineCounters {
    pub fn snapshot(&self) -> SerialLineCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SerialLineCounts {
            lines: get(&self.lines),
            garbage: get(&self.garbage),
            overlong: get(&self.overlong),
            bad_checksum: get(&self.bad_checksum),
            unparsed: get(&self.unparsed),
            no_answer: get(&self.no_answer),
            ignored: get(&self.ignored),
            port_lost: get(&self.port_lost),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn registry() -> &'static Mutex<BTreeMap<String, Arc<SerialLineCounters>>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<String, Arc<SerialLineCounters>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The counters of serial_line bus `bus` (created on first use; a restarted bus task keeps
/// counting where it left off).
pub fn counters(bus: &str) -> Arc<SerialLineCounters> {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.entry(bus.to_owned()).or_default().clone()
}

/// A snapshot of every serial_line bus's counters, by bus name.
pub fn all_counters() -> Vec<(String, SerialLineCounts)> {
    let map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.iter().map(|(k, v)| (k.clone(), v.snapshot())).collect()
}

/// The `serial_line` section of the health topic: every serial_line bus's counters by bus
/// name, or `None` when there is no serial_line bus. Counters are facts, not troubles: they
/// go out with the health topic's minute.
pub fn health_section() -> Option<crate::health::Section> {
    let all = all_counters();
    if all.is_empty() {
        return None;
    }
    let by_bus: serde_json::Map<String, serde_json::Value> = all
        .into_iter()
        .map(|(bus, counts)| (bus, serde_json::to_value(counts).unwrap_or_default()))
        .collect();
    Some(crate::health::Section {
        value: serde_json::Value::Object(by_bus),
        trouble: None,
    })
}

/// What `fieldlink check` can print for a device on a serial_line bus: how it is read and
/// where each point is found, one line each, indented by two spaces.
pub fn describe_device(device: &crate::config::Device) -> String {
    use crate::config::{Extract, LineValueKind};
    use std::fmt::Write as _;
    let Some(spec) = &device.serial_line else {
        return String::new();
    };
    let mut out = String::new();
    let how = match &spec.query {
        Some(q) => format!(
            "asked {:?} every {:?}, answer within {:?}",
            String::from_utf8_lossy(&q.bytes),
            device.interval,
            q.response_timeout
        ),
        None => "streaming".to_owned(),
    };
    let _ = writeln!(
        out,
        "  device {} ({how}{}{}, offline after {:?} without a good line)",
        device.name,
        spec.filter
            .as_ref()
            .map(|f| format!(", lines matching {:?}", f.as_str()))
            .unwrap_or_default(),
        spec.checksum
            .map(|c| format!(", checksum {c:?}"))
            .unwrap_or_default(),
        spec.stale_after
    );
    for p in &spec.points {
        let place = match &p.extract {
            Extract::Regex { regex, capture } => {
                format!("capture {capture:?} of {:?}", regex.as_str())
            }
            Extract::Field { delimiter, index } => format!("field {index} split at {delimiter:?}"),
        };
        let kind = match p.kind {
            LineValueKind::Number => "number",
            LineValueKind::Integer => "integer",
            LineValueKind::String => "string",
        };
        let _ = writeln!(
            out,
            "    point {:<24} {kind} from {place}{}{}",
            p.name,
            if p.scale != 1.0 || p.offset != 0.0 {
                format!(" x{} +{}", p.scale, p.offset)
            } else {
                String::new()
            },
            p.unit
                .as_deref()
                .map(|u| format!(" [{u}]"))
                .unwrap_or_default()
        );
    }
    out
}
