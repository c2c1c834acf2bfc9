//! The per-bus counters of serial_line buses, in a process-wide registry by bus name, and
//! the health topic's `serial_line` section built from them. They only grow.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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
/// go out with the health topic's heartbeat.
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
