//! The accepted range of every duration in the config file, in one table.
//!
//! Owns the numbers only: `validate` refuses a value outside its range (saying the range), so
//! the rest of the agent may add any configured duration to an `Instant` or multiply it by a
//! small factor without overflow checks of its own. The bounds are what makes that safe: the
//! largest is a day (a week for `stale_after`, a year for `max_age`), far from where
//! `Instant` and `Duration` arithmetic overflows. The test that runs the agent with every
//! duration at both ends of its range reads them from here.

use std::time::Duration;

/// The closed range `min..=max` of one kind of duration, and how messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
    /// What the value is, for "… must be between MIN and MAX" ("a poll interval").
    pub what: &'static str,
    /// A typical value, shown as an example.
    pub example: &'static str,
}

impl DurationRange {
    pub fn contains(&self, d: Duration) -> bool {
        self.min <= d && d <= self.max
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn seconds(n: u64) -> Duration {
    Duration::from_secs(n)
}
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// `[[device]] interval`, a point's `interval`, a profile's `interval`, a serial_line
/// device's `interval`. Below 10 ms a poll loop would only spin; a reading less often than
/// daily is not monitoring.
pub const POLL_INTERVAL: DurationRange = DurationRange {
    min: ms(10),
    max: seconds(DAY),
    what: "a poll interval",
    example: "5s",
};

/// A Modbus TCP bus's `timeout`, a Modbus RTU bus's `response_timeout`, a serial_line
/// query's `response_timeout`: how long one answer is awaited. A device that has not answered
/// in 10 minutes will not.
pub const REQUEST_TIMEOUT: DurationRange = DurationRange {
    min: ms(10),
    max: seconds(10 * MINUTE),
    what: "a request timeout",
    example: "1s",
};

/// A Modbus RTU bus's `inter_request_delay` (its lower bound is t3.5 at the bus's baud rate,
/// checked by the validator); devices want 5 to 50 ms, 10 s is generous.
pub const INTER_REQUEST_DELAY_MAX: Duration = seconds(10);

/// A serial_line device's `stale_after` (default 3 x its interval).
pub const STALE_AFTER: DurationRange = DurationRange {
    min: ms(10),
    max: seconds(7 * DAY),
    what: "the time without a good line before a sensor is offline",
    example: "15s",
};

/// `[mqtt] keep_alive`: MQTT carries it as a 16-bit count of seconds.
pub const KEEP_ALIVE: DurationRange = DurationRange {
    min: seconds(1),
    max: seconds(65_535),
    what: "the MQTT keep-alive",
    example: "15s",
};

/// `[mqtt] connect_timeout`: a TCP + TLS + CONNECT exchange over a slow cellular link takes
/// seconds; one that has not finished in 10 minutes is dead.
pub const CONNECT_TIMEOUT: DurationRange = DurationRange {
    min: seconds(1),
    max: seconds(10 * MINUTE),
    what: "the broker connect timeout",
    example: "20s",
};

/// `[mqtt] backoff_initial`: the first wait before reconnecting.
pub const BACKOFF_INITIAL: DurationRange = DurationRange {
    min: ms(100),
    max: seconds(HOUR),
    what: "the first reconnect delay",
    example: "1s",
};

/// `[mqtt] backoff_max`: the longest wait between reconnect attempts (and at least
/// `backoff_initial`).
pub const BACKOFF_MAX: DurationRange = DurationRange {
    min: ms(100),
    max: seconds(DAY),
    what: "the longest reconnect delay",
    example: "60s",
};

/// `[mqtt] max_interval`: the heartbeat of report by exception.
pub const MAX_INTERVAL: DurationRange = DurationRange {
    min: seconds(1),
    max: seconds(DAY),
    what: "the heartbeat that re-sends a steady value",
    example: "5m",
};

/// `[buffer] commit_interval`: it bounds what a power cut loses in "always" mode.
pub const COMMIT_INTERVAL: DurationRange = DurationRange {
    min: ms(10),
    max: seconds(MINUTE),
    what: "the commit interval (what a power cut loses in \"always\" mode)",
    example: "1s",
};

/// `[buffer] max_age`: stored readings older than this are dropped.
pub const MAX_AGE: DurationRange = DurationRange {
    min: seconds(MINUTE),
    // humantime's year (365.25 days), so the limit reads "1year" in messages.
    max: seconds(31_557_600),
    what: "the age after which stored readings are dropped",
    example: "7d",
};

/// A writable point's `min_write_interval`: how often it may be written. Zero turns the guard
/// off; a day is far beyond any setpoint's need.
pub const MIN_WRITE_INTERVAL: DurationRange = DurationRange {
    min: ms(0),
    max: seconds(DAY),
    what: "a point's min_write_interval",
    example: "1s",
};

/// `[mqtt] command_max_age`: how old a command may be (by its sender's `ts`) and still run.
/// Below a second, clock skew between sender and gateway alone would refuse commands.
pub const COMMAND_MAX_AGE: DurationRange = DurationRange {
    min: seconds(1),
    max: seconds(DAY),
    what: "the age after which a command is not run",
    example: "30s",
};

/// `[mqtt] health_interval`: the longest the retained health message goes unrefreshed.
pub const HEALTH_INTERVAL: DurationRange = DurationRange {
    min: seconds(10),
    max: seconds(DAY),
    what: "the interval of the health message",
    example: "5m",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_ordered_and_its_example_lies_inside() {
        for r in [
            POLL_INTERVAL,
            REQUEST_TIMEOUT,
            STALE_AFTER,
            KEEP_ALIVE,
            CONNECT_TIMEOUT,
            BACKOFF_INITIAL,
            BACKOFF_MAX,
            MAX_INTERVAL,
            COMMIT_INTERVAL,
            MAX_AGE,
        ] {
            assert!(r.min > Duration::ZERO && r.min <= r.max, "{r:?}");
            let example = super::super::units::parse_duration(r.example).unwrap();
            assert!(r.contains(example), "{r:?}");
        }
        // Zero is meaningful here: no guard between writes.
        let r = MIN_WRITE_INTERVAL;
        assert!(r.min == Duration::ZERO && r.min <= r.max);
        assert!(r.contains(super::super::units::parse_duration(r.example).unwrap()));
    }
}
