//! Periodic housekeeping timers on one shared phase.
//!
//! Every wake-up of the agent costs far more than the work it does when it is a one-second
//! check (on this 2-core VM ~15-20 µs of scheduler time each, against a few µs of work):
//! timers that each kept the phase of the moment their task started cost one wake-up each
//! per second. Started on whole multiples of their period on the wall clock instead, timers
//! of the same period expire in the same millisecond and one wake-up serves them all.
//! Missed ticks are skipped, not delayed, so a late tick does not shift the phase. Device
//! polls keep their cadence on the same grid ([`next_on_grid`]).
//!
//! The grid is shifted by a phase of the gateway's own ([`set_gateway`]): gateways whose
//! clocks NTP keeps within milliseconds would otherwise all poll and publish in the same
//! instant of every second, and a broker serving a fleet would take each second's readings
//! in one burst. The shift of a period `P` is the gateway's hash modulo `P`, so a grid whose
//! period divides another's still holds all of the other's points (`(h mod 5 s) mod 1 s =
//! h mod 1 s`) and one wake-up still serves a 1 s and a 5 s timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The gateway's hash, read as nanoseconds; 0 (the bare epoch grid) until [`set_gateway`].
static GATEWAY_PHASE: AtomicU64 = AtomicU64::new(0);

/// Shifts every grid by this gateway's own phase (see the module doc). Called once at start
/// with the gateway id, which is unique in a fleet (it is the MQTT client id).
pub fn set_gateway(id: &str) {
    GATEWAY_PHASE.store(fnv1a64(id.as_bytes()), Ordering::Relaxed);
}

/// 64-bit FNV-1a: spreads ids that differ in one character over the whole range.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The wall clock as seen from the gateway's grid: time since the epoch minus the gateway's
/// phase for `period`, so that the grid's points are its whole multiples of `period`.
fn on_gateway_clock(period: Duration) -> u128 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let period = period.as_nanos().max(1);
    // Adding a whole period less the phase keeps the result positive and its residue right.
    since_epoch + period - phase_ns(GATEWAY_PHASE.load(Ordering::Relaxed), period)
}

/// Where a gateway's grid of a period (in ns) starts within that period.
fn phase_ns(gateway_hash: u64, period_ns: u128) -> u128 {
    u128::from(gateway_hash) % period_ns
}

/// An interval whose ticks fall on the gateway's grid of `period` (whole multiples of it
/// since the Unix epoch, shifted by the gateway's phase); the first one is the next such
/// instant (never now).
pub fn aligned_interval(period: Duration) -> Interval {
    let since_epoch = nanos(on_gateway_clock(period));
    let start = Instant::now() + until_next_multiple(since_epoch, period);
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval
}

/// The point of the gateway's grid of `period` nearest to `t`, or the one after it when
/// that is not after `now`: a cadence that is already on the grid stays as it is, one that
/// is not moves by at most half a period, and never to a moment already past.
pub fn next_on_grid(t: Instant, period: Duration, now: Instant) -> Instant {
    let (wall_now, instant_now) = (on_gateway_clock(period), Instant::now());
    let wall_t = if t >= instant_now {
        wall_now + (t - instant_now).as_nanos()
    } else {
        wall_now.saturating_sub((instant_now - t).as_nanos())
    };
    let period_ns = period.as_nanos().max(1);
    let into = wall_t % period_ns;
    let on_grid = if into * 2 < period_ns {
        t.checked_sub(nanos(into)).unwrap_or(t)
    } else {
        t + nanos(period_ns - into)
    };
    if on_grid > now {
        return on_grid;
    }
    // Whole periods past `now`, on the same grid.
    let behind = (now - on_grid).as_nanos() / period_ns + 1;
    on_grid + nanos(behind * period_ns)
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// How long from `since_epoch` to the next whole multiple of `period` (a full period when
/// exactly on one).
fn until_next_multiple(since_epoch: Duration, period: Duration) -> Duration {
    let period_ns = period.as_nanos().max(1);
    nanos(period_ns - since_epoch.as_nanos() % period_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_is_the_next_whole_multiple_of_the_period() {
        let s = Duration::from_secs(1);
        assert_eq!(
            until_next_multiple(Duration::from_millis(10_250), s),
            Duration::from_millis(750)
        );
        assert_eq!(until_next_multiple(Duration::from_secs(10), s), s);
        assert_eq!(
            until_next_multiple(Duration::from_millis(10_999), Duration::from_secs(5)),
            Duration::from_millis(4_001)
        );
    }

    /// Where `t` falls within `period` on the wall clock, in ms (0 = on the grid).
    fn phase_ms(t: Instant, period: Duration) -> u128 {
        let wall = on_gateway_clock(period);
        let now = Instant::now();
        let at = if t >= now {
            wall + (t - now).as_nanos()
        } else {
            wall - (now - t).as_nanos()
        };
        let into = at % period.as_nanos();
        into.min(period.as_nanos() - into) / 1_000_000
    }

    #[test]
    fn gateways_get_phases_spread_over_the_period_that_nest_across_periods() {
        let second = Duration::from_secs(1).as_nanos();
        let phases: Vec<u128> = (0..100)
            .map(|i| phase_ns(fnv1a64(format!("gw-{i}").as_bytes()), second))
            .collect();
        // A fleet is spread over the second, not bunched in one part of it.
        for tenth in 0..10 {
            let in_tenth = phases.iter().filter(|&&p| p * 10 / second == tenth).count();
            assert!((2..=25).contains(&in_tenth), "tenth {tenth}: {in_tenth}");
        }
        // A gateway's 5 s grid lies on its 1 s grid (one wake-up serves both), and its
        // 250 ms grid holds the 1 s grid's points.
        for i in 0..100 {
            let hash = fnv1a64(format!("gw-{i}").as_bytes());
            let five = Duration::from_secs(5).as_nanos();
            assert_eq!(phase_ns(hash, five) % second, phase_ns(hash, second));
            let quarter = Duration::from_millis(250).as_nanos();
            assert_eq!(phase_ns(hash, second) % quarter, phase_ns(hash, quarter));
        }
    }

    #[tokio::test]
    async fn a_cadence_snaps_to_the_grid_by_at_most_half_a_period_and_never_into_the_past() {
        let period = Duration::from_secs(1);
        let now = Instant::now();
        for offset_ms in [1_000, 1_250, 1_499, 1_500, 1_501, 1_999, 10_123] {
            let t = now + Duration::from_millis(offset_ms);
            let snapped = next_on_grid(t, period, now);
            assert!(
                phase_ms(snapped, period) <= 1,
                "{offset_ms}: not on the grid"
            );
            let moved = if snapped > t {
                snapped - t
            } else {
                t - snapped
            };
            assert!(
                moved <= period / 2 + Duration::from_millis(1),
                "{offset_ms}: {moved:?}"
            );
            assert!(snapped > now);
        }
        // Nearest grid point already past: the next one after `now`, whatever the phase
        // (every offset over two periods, so the case is met whatever the wall clock says).
        let soon = now + Duration::from_millis(1);
        for later_ms in (0..2_000).step_by(37) {
            let later = now + Duration::from_millis(later_ms);
            let next = next_on_grid(soon, period, later);
            assert!(next > later && next <= later + period, "{later_ms}");
            assert!(phase_ms(next, period) <= 1, "{later_ms}: not on the grid");
        }
        // Already on the grid: stays.
        let on = next_on_grid(now + Duration::from_secs(3), period, now);
        let again = next_on_grid(on + period, period, now);
        let drift = if again > on + period {
            again - (on + period)
        } else {
            (on + period) - again
        };
        assert!(drift < Duration::from_millis(1), "{drift:?}");
    }

    #[tokio::test]
    async fn two_intervals_of_one_period_started_apart_tick_together() {
        // Real time: the phase comes from the wall clock, which a paused tokio clock
        // would not move.
        let mut a = aligned_interval(Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(150));
        let mut b = aligned_interval(Duration::from_secs(1));
        let (ta, tb) = (a.tick().await, b.tick().await);
        let apart = if ta > tb { ta - tb } else { tb - ta };
        // Either the same tick, or (started across a second boundary) one period apart.
        let off = apart.min(Duration::from_secs(1).abs_diff(apart));
        assert!(off < Duration::from_millis(5), "{apart:?}");
    }
}
