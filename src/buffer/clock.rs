//! Time as the buffer sees it: the wall clock (what readings are stamped with) and the
//! kernel's boot-time clock (what ages are measured by), plus which OS boot we are in.
//!
//! Owns reading those clocks and nothing else; the buffer takes a [`Clock`] so tests (and a
//! soak) can step the wall clock without root.
//!
//! Why two clocks: a Pi without an RTC that syncs NTP during an outage steps its wall clock
//! by hours, and an age measured on it would call a 70 s old reading hours old.
//! `CLOCK_BOOTTIME` counts from the OS boot, keeps counting through suspend, and no
//! `settimeofday` moves it. It restarts at every OS boot, so a stored time on it only means
//! something together with the boot it was taken in: `/proc/sys/kernel/random/boot_id`.

use std::sync::{Arc, Mutex};

/// How far the two clocks may drift apart between two looks before it counts as a step of
/// the wall clock (NTP slews by at most 0.5 ms/s; anything bigger is a step).
pub const STEP_TOLERANCE_MS: i64 = 2_000;

/// A point on the boot-time clock and the OS boot it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub os_boot: OsBoot,
    /// Milliseconds since that OS boot (CLOCK_BOOTTIME).
    pub boot_ms: u64,
}

impl Queued {
    /// A record read from a store written before boot-time stamps existed (schema 1).
    pub const UNKNOWN: Queued = Queued {
        os_boot: OsBoot::Unknown,
        boot_ms: 0,
    };
}

/// Which OS boot a boot-time stamp was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsBoot {
    /// The one this process runs in (the store numbers it when it writes the record).
    This,
    /// The store's number for an OS boot (the `os_boots` table).
    Stored(i64),
    /// Not recorded (rows written by schema 1): only the wall clock tells their age.
    Unknown,
}

/// The two clocks and the boot identity. `Send + Sync`: the I/O thread and the uplink
/// both read it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time, unix milliseconds.
    fn wall_ms(&self) -> u64;
    /// The boot-time clock: milliseconds since the OS booted, suspend included.
    fn boot_ms(&self) -> u64;
    /// What identifies this OS boot (the kernel's boot id).
    fn os_boot_id(&self) -> String;
}

/// The real clocks.
#[derive(Debug)]
pub struct SystemClock {
    boot_id: String,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            // Without a boot id, every start counts as a new OS boot: stored readings are
            // then aged by the lower bound for an earlier boot, which never drops too soon.
            .unwrap_or_else(|| format!("unknown-{}-{}", std::process::id(), fastrand::u64(..)));
        SystemClock { boot_id }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        crate::model::unix_ms_now()
    }

    fn boot_ms(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            return 0;
        }
        (ts.tv_sec as u64)
            .saturating_mul(1000)
            .saturating_add(ts.tv_nsec as u64 / 1_000_000)
    }

    fn os_boot_id(&self) -> String {
        self.boot_id.clone()
    }
}

/// A clock that moves only when told: for tests and soaks that need a wall-clock step, an
/// OS reboot or time passing without waiting for it. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<ManualTime>>);

#[derive(Debug, Clone)]
struct ManualTime {
    wall_ms: u64,
    boot_ms: u64,
    boot_id: String,
}

impl ManualClock {
    pub fn new(wall_ms: u64, boot_ms: u64, boot_id: &str) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(ManualTime {
            wall_ms,
            boot_ms,
            boot_id: boot_id.to_string(),
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut ManualTime) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Time passes on both clocks.
    pub fn advance(&self, ms: u64) {
        self.with(|t| {
            t.wall_ms += ms;
            t.boot_ms += ms;
        })
    }

    /// The wall clock is set by `delta_ms` (NTP step, `date -s`); the boot-time clock is not.
    pub fn step_wall(&self, delta_ms: i64) {
        self.with(|t| t.wall_ms = t.wall_ms.saturating_add_signed(delta_ms))
    }

    /// The OS rebooted after `down_ms` powered off: a new boot id, the boot-time clock
    /// restarts at `up_ms`, and the wall clock reads `wall_ms` (an RTC-less Pi may come
    /// back with any time).
    pub fn reboot(&self, boot_id: &str, up_ms: u64, wall_ms: u64) {
        self.with(|t| {
            t.boot_id = boot_id.to_string();
            t.boot_ms = up_ms;
            t.wall_ms = wall_ms;
        })
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> u64 {
        self.with(|t| t.wall_ms)
    }
    fn boot_ms(&self) -> u64 {
        self.with(|t| t.boot_ms)
    }
    fn os_boot_id(&self) -> String {
        self.with(|t| t.boot_id.clone())
    }
}

/// Notices wall-clock steps by comparing how far each clock moved since the last look.
#[derive(Debug)]
pub struct StepWatch {
    last: Option<(u64, u64)>,
}

impl StepWatch {
    pub fn new() -> StepWatch {
        StepWatch { last: None }
    }

    /// How far the wall clock jumped since the last look, beyond the boot-time clock's
    /// progress, when that is more than [`STEP_TOLERANCE_MS`]. Each step is reported once.
    pub fn look(&mut self, clock: &dyn Clock) -> Option<i64> {
        let now = (clock.wall_ms(), clock.boot_ms());
        let step = self.last.and_then(|(wall, boot)| {
            let wall_moved = now.0 as i64 - wall as i64;
            let boot_moved = now.1 as i64 - boot as i64;
            let step = wall_moved - boot_moved;
            (step.abs() > STEP_TOLERANCE_MS).then_some(step)
        });
        self.last = Some(now);
        step
    }
}

impl Default for StepWatch {
    fn default() -> Self {
        StepWatch::new()
    }
}

/// `+3h 0m 5s` / `-12s`: a step for the log.
pub fn describe_step(step_ms: i64) -> String {
    let sign = if step_ms < 0 { '-' } else { '+' };
    let d = std::time::Duration::from_secs(step_ms.unsigned_abs() / 1000);
    format!("{sign}{}", humantime::format_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_time_clock_moves_and_the_boot_id_is_stable() {
        let c = SystemClock::new();
        let a = c.boot_ms();
        assert!(a > 0);
        assert!(c.boot_ms() >= a);
        assert_eq!(c.os_boot_id(), SystemClock::new().os_boot_id());
    }

    #[test]
    fn a_wall_clock_step_is_reported_once_and_slow_drift_never() {
        let c = ManualClock::new(1_000_000, 50_000, "b1");
        let mut w = StepWatch::new();
        assert_eq!(w.look(&c), None);
        c.advance(60_000);
        c.step_wall(1_500);
        assert_eq!(w.look(&c), None, "within the tolerance");
        c.step_wall(3 * 3600 * 1000);
        c.advance(1000);
        assert_eq!(w.look(&c), Some(3 * 3600 * 1000));
        c.advance(1000);
        assert_eq!(w.look(&c), None, "reported once");
        c.step_wall(-10_000);
        assert_eq!(w.look(&c), Some(-10_000));
        assert_eq!(describe_step(3 * 3600 * 1000), "+3h");
        assert_eq!(describe_step(-10_000), "-10s");
    }
}
