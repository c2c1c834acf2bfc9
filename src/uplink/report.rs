//! Report by exception: decides, per point, whether a reading is worth the link.
//!
//! Owns the last *published* value and time of every point, and nothing else: it sees
//! readings after the poller made them and before the outbox holds them, never touches the
//! outbox, the buses or the clock (time is the reading's own `ts_ms`).
//!
//! Rules (see `config::ReportByException`):
//! - The first reading of a point, and the first after its device went offline, is published.
//! - A number is published when it moved strictly more than the deadband from the last
//!   published value (absolute, or percent of that value's magnitude; from 0 any move counts).
//! - A bool, a text, or a non-finite float is published when it differs from the last one.
//! - A change of quality is a change: a point turning bad (value `null` with a quality), its
//!   quality changing (`timeout` to `exception:2`), and a value after a bad spell are all
//!   published, whatever the deadband.
//! - Whatever the value, a reading `max_interval` or more after the point's last published
//!   one is published (the heartbeat that tells a steady value from a dead agent).
//! - A reading whose `ts_ms` went backwards (wall clock stepped) is published and restarts
//!   the heartbeat from there, so a clock step can never silence a point.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Deadband, ReportByException};
use crate::model::{Quality, Reading, Value};

#[derive(Debug)]
struct LastPublished {
    value: Result<Value, Quality>,
    ts_ms: u64,
}

/// Per-point state of report by exception, keyed by device then point.
#[derive(Debug)]
pub struct ExceptionFilter {
    policy: ReportByException,
    last: HashMap<Arc<str>, HashMap<Arc<str>, LastPublished>>,
}

impl ExceptionFilter {
    pub fn new(policy: ReportByException) -> Self {
        ExceptionFilter {
            policy,
            last: HashMap::new(),
        }
    }

    /// True when `reading` must be published; it is then remembered as the point's last.
    pub fn admit(&mut self, reading: &Reading) -> bool {
        let points = match self.last.get_mut(&reading.device) {
            Some(points) => points,
            None => self.last.entry(reading.device.clone()).or_default(),
        };
        if let Some(last) = points.get_mut(&reading.point) {
            let heartbeat_due = reading.ts_ms < last.ts_ms
                || reading.ts_ms - last.ts_ms >= self.policy.max_interval.as_millis() as u64;
            if !heartbeat_due && !moved(self.policy.deadband, &last.value, &reading.value) {
                return false;
            }
            last.value = reading.value.clone();
            last.ts_ms = reading.ts_ms;
            return true;
        }
        points.insert(
            reading.point.clone(),
            LastPublished {
                value: reading.value.clone(),
                ts_ms: reading.ts_ms,
            },
        );
        true
    }

    /// `reading` is published whatever the deadband says (a value read back after a write):
    /// the next readings are compared with it.
    pub fn published(&mut self, reading: &Reading) {
        self.last.entry(reading.device.clone()).or_default().insert(
            reading.point.clone(),
            LastPublished {
                value: reading.value.clone(),
                ts_ms: reading.ts_ms,
            },
        );
    }

    /// The device went offline: its next readings are published whatever they are, so a
    /// consumer sees fresh values after the outage even if nothing moved.
    pub fn forget_device(&mut self, device: &str) {
        self.last.remove(device);
    }
}

fn moved(deadband: Deadband, last: &Result<Value, Quality>, now: &Result<Value, Quality>) -> bool {
    match (last, now) {
        (Ok(last), Ok(now)) => value_moved(deadband, last, now),
        (Err(last), Err(now)) => last != now,
        _ => true,
    }
}

fn value_moved(deadband: Deadband, last: &Value, now: &Value) -> bool {
    match (as_number(last), as_number(now)) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() => {
            let change = (b - a).abs();
            match deadband {
                Deadband::Absolute(band) => change > band,
                Deadband::Percent(percent) => change > a.abs() * percent / 100.0,
            }
        }
        // NaN != NaN: compare non-finite floats by their bits, so a stuck NaN stays quiet.
        (Some(a), Some(b)) => a.to_bits() != b.to_bits(),
        _ => last != now,
    }
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        Value::Bool(_) | Value::Text(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(point: &str, value: Value, ts_ms: u64) -> Reading {
        bad_or_good(point, Ok(value), ts_ms)
    }

    fn bad_or_good(point: &str, value: Result<Value, Quality>, ts_ms: u64) -> Reading {
        Reading {
            device: Arc::from("m1"),
            point: Arc::from(point),
            value,
            unit: None,
            ts_ms,
        }
    }

    fn filter(deadband: Deadband) -> ExceptionFilter {
        ExceptionFilter::new(ReportByException {
            deadband,
            max_interval: Duration::from_secs(60),
        })
    }

    fn admitted(f: &mut ExceptionFilter, values: &[(f64, u64)]) -> Vec<bool> {
        values
            .iter()
            .map(|&(v, ts)| f.admit(&reading("v", Value::Float(v), ts)))
            .collect()
    }

    #[test]
    fn absolute_deadband_compares_with_the_last_published_value_not_the_last_read() {
        let mut f = filter(Deadband::Absolute(0.5));
        // 230.0 published; creeping by 0.2 is suppressed until 0.6 away from 230.0.
        assert_eq!(
            admitted(
                &mut f,
                &[(230.0, 0), (230.2, 1), (230.4, 2), (230.6, 3), (230.7, 4)]
            ),
            [true, false, false, true, false]
        );
    }

    #[test]
    fn a_change_equal_to_the_deadband_is_not_enough() {
        let mut f = filter(Deadband::Absolute(1.0));
        assert_eq!(admitted(&mut f, &[(10.0, 0), (11.0, 1)]), [true, false]);
    }

    #[test]
    fn percent_deadband_scales_with_the_last_published_value() {
        let mut f = filter(Deadband::Percent(2.0));
        assert_eq!(
            admitted(&mut f, &[(100.0, 0), (101.9, 1), (102.1, 2), (104.0, 3)]),
            [true, false, true, false]
        );
        let mut zero = filter(Deadband::Percent(2.0));
        assert_eq!(admitted(&mut zero, &[(0.0, 0), (0.001, 1)]), [true, true]);
    }

    #[test]
    fn a_steady_value_is_re_sent_when_max_interval_has_passed() {
        let mut f = filter(Deadband::Absolute(0.5));
        assert_eq!(
            admitted(
                &mut f,
                &[(1.0, 0), (1.0, 59_999), (1.0, 60_000), (1.0, 60_001)]
            ),
            [true, false, true, false]
        );
    }

    #[test]
    fn a_clock_step_backwards_publishes_and_restarts_the_heartbeat() {
        let mut f = filter(Deadband::Absolute(0.5));
        assert_eq!(
            admitted(&mut f, &[(1.0, 100_000), (1.0, 5_000), (1.0, 6_000)]),
            [true, true, false]
        );
    }

    #[test]
    fn bools_text_and_nan_are_published_on_change_only() {
        let mut f = filter(Deadband::Absolute(100.0));
        let mut admit = |v: Value, ts| f.admit(&reading("s", v, ts));
        assert!(admit(Value::Bool(false), 0));
        assert!(!admit(Value::Bool(false), 1));
        assert!(admit(Value::Bool(true), 2));
        assert!(admit(Value::Text("a".into()), 3));
        assert!(!admit(Value::Text("a".into()), 4));
        assert!(admit(Value::Float(f64::NAN), 5));
        assert!(!admit(Value::Float(f64::NAN), 6));
        assert!(admit(Value::Float(1.0), 7));
    }

    #[test]
    fn a_quality_change_is_a_change_whatever_the_deadband() {
        let mut f = filter(Deadband::Absolute(100.0));
        let mut admit = |v: Result<Value, Quality>, ts| f.admit(&bad_or_good("v", v, ts));
        assert!(admit(Ok(Value::Float(1.0)), 0));
        assert!(admit(Err(Quality::Timeout), 1), "turning bad");
        assert!(
            !admit(Err(Quality::Timeout), 2),
            "still bad for the same cause"
        );
        assert!(
            admit(Err(Quality::Exception(2)), 3),
            "bad for another cause"
        );
        assert!(admit(Ok(Value::Float(1.0)), 4), "good again, same value");
        assert!(!admit(Ok(Value::Float(1.5)), 5), "within the deadband");
    }

    #[test]
    fn points_are_filtered_independently_and_offline_devices_start_afresh() {
        let mut f = filter(Deadband::Absolute(0.5));
        assert!(f.admit(&reading("a", Value::Int(1), 0)));
        assert!(f.admit(&reading("b", Value::Int(1), 0)));
        assert!(!f.admit(&reading("a", Value::Int(1), 1)));
        f.forget_device("m1");
        assert!(f.admit(&reading("a", Value::Int(1), 2)));
    }
}
