//! Exponential backoff, as a pure function of the failure count: the one implementation the
//! pollers share (a device's probes and a blamed read's retries in the Modbus loop, a lost
//! serial port's reopens).
//!
//! Owns only the arithmetic; callers keep their own failure counters and clocks.

use std::time::Duration;

/// The wait after `failures` consecutive failures (1 = first failure): `min * 2^(failures-1)`,
/// capped at `max`. Exact: for waits that only pace a local retry (a serial port reopened).
pub fn exponential(failures: u32, min: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    min.saturating_mul(1u32 << exp).min(max)
}

/// [`exponential`], spread by +-20 % so a thousand gateways (or ten devices on one bus) that
/// failed together do not retry in lockstep.
pub fn delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let spread = 0.8 + fastrand::f64() * 0.4;
    exponential(failures, min, max).mul_f64(spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_from_min_and_stays_within_jitter_of_the_cap() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for (failures, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (1000, 60.0)] {
            for _ in 0..50 {
                let d = delay(failures, min, max).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "{failures}: {d}"
                );
            }
        }
    }

    #[test]
    fn exponential_doubles_from_min_up_to_the_cap_exactly() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(1));
        let waits: Vec<Duration> = (1..=5).map(|n| exponential(n, min, max)).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 1000, 1000].map(Duration::from_millis)
        );
        assert_eq!(exponential(u32::MAX, min, max), max);
    }

    #[test]
    fn zero_failures_is_treated_as_the_first() {
        let d = delay(0, Duration::from_secs(1), Duration::from_secs(60));
        assert!(d <= Duration::from_millis(1200));
    }
}
