//! Everything decided about a command before it may reach a bus: retained or not, parsed,
//! writable, fresh, within `min`/`max`, not too soon after the last write, and encodable.
//! Pure: the caller passes the wall clock (for `expires` and the sender's `ts`) and the
//! monotonic clock (for the write interval), so every rule is tested without a device or a
//! broker. A refused command never touches the bus.

use std::time::{Duration, Instant};

use crate::config::{DataType, Point, Table};
use crate::model::Value;
use crate::poll::modbus::codec::{encode_bit, encode_registers, EncodeError, Encoded};

use super::payload::{Command, ParseError, Status};

/// A command that passed every check: ready for the bus, until `deadline_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub id: Option<String>,
    /// The requested value, as the point's kind (`"ON"` on a bool point is `true`).
    pub requested: Value,
    pub encoded: Encoded,
    /// Unix ms after which it must not run even if still queued: the earlier of the
    /// sender's `expires` and its `ts` + `command_max_age`.
    pub deadline_ms: Option<u64>,
}

impl Admitted {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_some_and(|d| now_ms > d)
    }
}

/// Why a command was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the command was retained: a retained command would run again at every reconnect; \
         publish commands with retain = false"
    )]
    Retained,
    #[error("{0}")]
    Malformed(#[from] ParseError),
    #[error("{0} is not writable: set writable = true on the point to allow writes")]
    NotWritable(String),
    #[error("{value} is below the point's min = {min}")]
    BelowMin { value: f64, min: f64 },
    #[error("{value} is above the point's max = {max}")]
    AboveMax { value: f64, max: f64 },
    #[error(
        "written {since_ms} ms ago: this point takes one write per {interval_ms} ms \
         (min_write_interval)"
    )]
    TooSoon { since_ms: u128, interval_ms: u128 },
    #[error("expired {late_ms} ms before it could run ({why})")]
    Expired { late_ms: u64, why: &'static str },
    #[error("{0}")]
    NotEncodable(#[from] EncodeError),
    #[error(
        "no bus task serves this device now (the agent is starting or stopping, its bus \
         restarts on a configuration reload, or its bus could not be opened: see the log)"
    )]
    NotServed,
    #[error("too many commands are waiting for this device's bus: send it again in a moment")]
    Busy,
}

impl Refusal {
    /// The result status: an expired command is `expired`, anything else `rejected`.
    pub fn status(&self) -> Status {
        match self {
            Refusal::Expired { .. } => Status::Expired,
            _ => Status::Rejected,
        }
    }
}

/// The facts a decision needs beside the command.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// Unix ms, for the sender's `expires` and `ts`.
    pub wall_ms: u64,
    /// For the interval between writes, which a clock step must not shorten.
    pub now: Instant,
}

/// Checks a parsed command against its point and the point's write rules (`point.write`,
/// `None` without `writable = true`); `last_write` is when this point was last written.
pub fn admit(
    point: &Point,
    command: Command,
    command_max_age: Duration,
    last_write: Option<Instant>,
    clocks: Clocks,
) -> Result<Admitted, Refusal> {
    let policy = match (&point.write, point.table) {
        (Some(p), Table::Holding | Table::Coil) => p,
        _ => return Err(Refusal::NotWritable(point.name.clone())),
    };
    let max_age_ms = u64::try_from(command_max_age.as_millis()).unwrap_or(u64::MAX);
    let by_age = command.sent_ms.map(|ts| ts.saturating_add(max_age_ms));
    let deadline_ms = match (command.expires_ms, by_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(deadline) = deadline_ms.filter(|&d| clocks.wall_ms > d) {
        let why = if Some(deadline) == command.expires_ms {
            "its expires"
        } else {
            "its ts + command_max_age"
        };
        return Err(Refusal::Expired {
            late_ms: clocks.wall_ms - deadline,
            why,
        });
    }
    let requested = as_point_kind(point, command.value);
    if let Some(v) = number(&requested) {
        if let Some(min) = policy.min.filter(|&min| v < min) {
            return Err(Refusal::BelowMin { value: v, min });
        }
        if let Some(max) = policy.max.filter(|&max| v > max) {
            return Err(Refusal::AboveMax { value: v, max });
        }
    }
    spaced(point, last_write, clocks.now)?;
    let encoded = match point.table {
        Table::Coil => Encoded::Coil(encode_bit(point, &requested)?),
        _ => Encoded::Registers(encode_registers(point, &requested)?),
    };
    Ok(Admitted {
        id: command.id,
        requested,
        encoded,
        deadline_ms,
    })
}

/// `min_write_interval`: `Err` when `point` was written (at `last_write`) less than its
/// interval before `now`. Checked at admission, and again by the bus right before the write,
/// since a command may have waited behind another write of the same point.
pub fn spaced(point: &Point, last_write: Option<Instant>, now: Instant) -> Result<(), Refusal> {
    let (Some(policy), Some(last)) = (&point.write, last_write) else {
        return Ok(());
    };
    let since = now.saturating_duration_since(last);
    if since < policy.min_write_interval {
        return Err(Refusal::TooSoon {
            since_ms: since.as_millis(),
            interval_ms: policy.min_write_interval.as_millis(),
        });
    }
    Ok(())
}

/// Switch words sent as strings (`"ON"`, `"off"`, `"true"`) and 0 / 1 mean a bool on a bool
/// point, so no `min`/`max` applies to them.
fn as_point_kind(point: &Point, value: Value) -> Value {
    match (&value, point.data_type) {
        (Value::Int(0), DataType::Bool) => Value::Bool(false),
        (Value::Int(1), DataType::Bool) => Value::Bool(true),
        (Value::Text(t), DataType::Bool) => match t.to_ascii_lowercase().as_str() {
            "on" | "true" => Value::Bool(true),
            "off" | "false" => Value::Bool(false),
            _ => value,
        },
        _ => value,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        Value::Bool(_) | Value::Text(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{WriteFunction, WriteSettings};
    use crate::writes::payload::parse;

    const WALL: u64 = 1_764_160_000_000;

    fn rules(min: Option<f64>, max: Option<f64>) -> Option<WriteSettings> {
        Some(WriteSettings {
            min,
            max,
            function: WriteFunction::Single,
            min_write_interval: Duration::from_secs(1),
        })
    }

    fn setpoint() -> Point {
        Point {
            scale: 0.1,
            write: rules(Some(5.0), Some(30.0)),
            ..Point::new("setpoint", Table::Holding, 10, DataType::I16)
        }
    }

    fn try_admit(
        point: &Point,
        payload: &str,
        last_write: Option<Instant>,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        admit(
            point,
            parse(payload.as_bytes()).unwrap(),
            Duration::from_secs(30),
            last_write,
            Clocks { wall_ms: WALL, now },
        )
    }

    #[test]
    fn a_command_within_the_rules_is_encoded_through_the_points_scale() {
        let now = Instant::now();
        let ok = try_admit(&setpoint(), "21.5", None, now).unwrap();
        assert_eq!(ok.encoded, Encoded::Registers(vec![215]));
        assert_eq!(ok.requested, Value::Float(21.5));
        assert_eq!(ok.deadline_ms, None);
    }

    #[test]
    fn a_point_without_writable_or_on_a_read_only_table_refuses() {
        let now = Instant::now();
        let read_only = Point {
            write: None,
            ..setpoint()
        };
        let cmd = parse(b"21.5").unwrap();
        let clocks = Clocks { wall_ms: WALL, now };
        let age = Duration::from_secs(30);
        let refused = admit(&read_only, cmd.clone(), age, None, clocks);
        assert_eq!(refused, Err(Refusal::NotWritable("setpoint".into())));
        let input = Point {
            write: rules(None, None),
            ..Point::new("temp", Table::Input, 1, DataType::I16)
        };
        let refused = admit(&input, cmd, age, None, clocks);
        assert!(matches!(refused, Err(Refusal::NotWritable(_))));
    }

    #[test]
    fn min_max_and_the_write_interval_refuse_before_the_wire() {
        let now = Instant::now();
        let p = setpoint();
        assert_eq!(
            try_admit(&p, "4.9", None, now),
            Err(Refusal::BelowMin {
                value: 4.9,
                min: 5.0
            })
        );
        assert!(matches!(
            try_admit(&p, "30.5", None, now),
            Err(Refusal::AboveMax { .. })
        ));
        let just_written = now - Duration::from_millis(400);
        assert_eq!(
            try_admit(&p, "20", Some(just_written), now),
            Err(Refusal::TooSoon {
                since_ms: 400,
                interval_ms: 1000
            })
        );
        assert!(try_admit(&p, "20", Some(now - Duration::from_secs(1)), now).is_ok());
        assert!(matches!(
            try_admit(&p, "21.55", None, now),
            Err(Refusal::NotEncodable(EncodeError::BetweenSteps { .. }))
        ));
    }

    #[test]
    fn a_stale_command_expires_by_its_expires_or_its_age() {
        let now = Instant::now();
        let p = setpoint();
        let late = format!("{{\"value\":20,\"expires\":{}}}", WALL - 5);
        let refused = try_admit(&p, &late, None, now).unwrap_err();
        assert_eq!(refused.status(), Status::Expired);
        let old = format!("{{\"value\":20,\"ts\":{}}}", WALL - 31_000);
        assert_eq!(
            try_admit(&p, &old, None, now),
            Err(Refusal::Expired {
                late_ms: 1000,
                why: "its ts + command_max_age"
            })
        );
        let fresh = format!(
            "{{\"value\":20,\"ts\":{},\"expires\":{}}}",
            WALL - 1000,
            WALL + 500
        );
        let ok = try_admit(&p, &fresh, None, now).unwrap();
        assert_eq!(ok.deadline_ms, Some(WALL + 500));
        assert!(!ok.expired(WALL + 500) && ok.expired(WALL + 501));
    }

    #[test]
    fn a_coil_takes_bools_and_switch_words() {
        let now = Instant::now();
        let relay = Point {
            write: rules(None, None),
            ..Point::new("relay", Table::Coil, 3, DataType::Bool)
        };
        for (payload, want) in [
            ("true", true),
            ("OFF", false),
            ("\"ON\"", true),
            ("0", false),
        ] {
            let ok = try_admit(&relay, payload, None, now).unwrap();
            assert_eq!(ok.encoded, Encoded::Coil(want), "{payload}");
        }
        assert!(matches!(
            try_admit(&relay, "\"maybe\"", None, now),
            Err(Refusal::NotEncodable(_))
        ));
    }
}
