//! systemd notify protocol (READY, RELOADING, STATUS, WATCHDOG, STOPPING); a no-op without NOTIFY_SOCKET.
//!
//! Owns the conversation with the service manager and the watchdog policy: `WATCHDOG=1` is
//! sent only while every loop registered with [`Health`] keeps ticking, so a wedged bus task
//! or uplink makes systemd restart the agent instead of being hidden by a timer that pings
//! whatever happens. Uses the pure-Rust `sd-notify` crate (a datagram to `$NOTIFY_SOCKET`),
//! not libsystemd, so the agent builds anywhere, statically and for ARMv6 too.
//! Does not decide what the status says (the caller's closure does) nor when the agent is
//! ready (app wiring calls [`Notifier::ready`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// How often stalls are looked for and the status line is refreshed when no watchdog asks
/// for something faster.
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// Talks to systemd through `$NOTIFY_SOCKET`; every method is a cheap no-op without it.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    /// Set after the first failed send, so a vanished socket is reported once, not per ping.
    send_failed: Arc<AtomicBool>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier {
            enabled,
            watchdog: if enabled { watchdog } else { None },
            send_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A notifier that never sends (tests, `fieldlink demo`).
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            watchdog: None,
            send_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog timeout systemd expects pings within (`WatchdogSec=`), if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Config loaded and bus tasks running; must not wait for the broker.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A reload began (SIGHUP); [`ready`](Self::ready) ends it, applied or refused. systemd 253
    /// and later want the monotonic time with it, and fail the reload without.
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        // Not sd-notify's `monotonic_usec_now`: it multiplies `tv_sec` in the C type, which on
        // 32-bit ARM (armhf: a 32-bit time_t) overflows after 36 minutes of uptime (a panic in
        // debug builds, a wrong time in release; found by the armv7 suite under qemu).
        if let Some(usec) = monotonic_usec() {
            states.push(NotifyState::MonotonicUsec(usec));
        }
        self.send(&states);
    }

    /// One line for `systemctl status` (link state, buffer depth).
    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    /// Shutdown has begun; systemd waits for the exit instead of counting it as a crash.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        match sd_notify::notify(false, states) {
            Ok(()) => {
                if self.send_failed.swap(false, Ordering::Relaxed) {
                    tracing::info!("systemd notify socket reachable again");
                }
            }
            Err(e) => {
                if !self.send_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        error_kind = "notify",
                        "cannot notify systemd through NOTIFY_SOCKET; the watchdog will restart the service if this persists"
                    );
                }
            }
        }
    }
}

/// The watchdog interval the way `sd_watchdog_enabled(3)` decides it: `WATCHDOG_USEC` must be
/// a positive number of microseconds, and `WATCHDOG_PID`, when present, must name us (a
/// child that inherited the variables must not ping on its parent's behalf). The sd-notify
/// crate's own `watchdog_enabled` also demands WATCHDOG_PID, which libsystemd does not.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Runs until `cancel`: pings the watchdog every half `WatchdogSec` while no loop registered
/// with `health` has stalled, sends `STATUS=` (the stalled loops, then `status()`) whenever
/// it changes, and logs once when pings stop and once when they resume.
///
/// Loops should register with a `max_silence` well below half of `WatchdogSec`, so a stall
/// is noticed (and logged by name) before systemd gives up on us.
///
/// The checks run on the gateway's wall-clock grid ([`crate::ticks`]), with the agent's
/// other one-second timers.
pub async fn watchdog(
    health: Arc<Health>,
    status: impl Fn() -> String,
    notifier: Notifier,
    cancel: CancellationToken,
) {
    watchdog_on(
        health,
        status,
        notifier,
        cancel,
        crate::ticks::aligned_interval,
    )
    .await
}

/// [`watchdog`] with its checks on `ticker(period)`: a test on tokio's paused clock passes
/// `tokio::time::interval`, whose ticks it can place exactly, where the wall-clock grid's
/// phase would depend on the moment the test started.
pub async fn watchdog_on(
    health: Arc<Health>,
    status: impl Fn() -> String,
    notifier: Notifier,
    cancel: CancellationToken,
    ticker: impl FnOnce(Duration) -> tokio::time::Interval,
) {
    let ping_every = notifier.watchdog_timeout().map(|t| t / 2);
    let check_every = ping_every.map_or(STATUS_PERIOD, |p| p.min(STATUS_PERIOD));
    let mut ticker = ticker(check_every);
    let mut next_ping = Instant::now();
    let mut stalled_before: Vec<String> = Vec::new();
    let mut last_status: Option<String> = None;

    if let Some(every) = ping_every {
        tracing::debug!(?every, "systemd watchdog enabled");
    }

    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let stalled = health.stalled();
        if stalled != stalled_before {
            report_stall_change(&stalled_before, &stalled, ping_every.is_some());
            stalled_before = stalled.clone();
        }

        if let Some(every) = ping_every {
            let now = Instant::now();
            if stalled.is_empty() && now >= next_ping {
                notifier.ping();
                next_ping = now + every;
            }
        }

        if notifier.is_enabled() {
            let line = status_line(&stalled, &status());
            if last_status.as_deref() != Some(line.as_str()) {
                notifier.status(&line);
                last_status = Some(line);
            }
        }
    }
}

fn status_line(stalled: &[String], status: &str) -> String {
    if stalled.is_empty() {
        status.to_string()
    } else {
        format!("STALLED: {}; {status}", stalled.join(", "))
    }
}

fn report_stall_change(before: &[String], now: &[String], watchdog: bool) {
    if before.is_empty() {
        let loops = now.join(", ");
        if watchdog {
            tracing::error!(
                stalled = %loops,
                error_kind = "stall",
                "loop stopped making progress; watchdog pings stop until it recovers (systemd restarts the agent after WatchdogSec)"
            );
        } else {
            tracing::error!(stalled = %loops, error_kind = "stall", "loop stopped making progress");
        }
    } else if now.is_empty() {
        let loops = before.join(", ");
        tracing::info!(recovered = %loops, "all loops making progress again; watchdog pings resume");
    } else {
        tracing::warn!(stalled = %now.join(", "), "set of stalled loops changed");
    }
}

/// CLOCK_MONOTONIC in microseconds, computed in 128 bits whatever the width of `time_t`.
fn monotonic_usec() -> Option<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    Some(i128::from(ts.tv_sec) * 1_000_000 + i128::from(ts.tv_nsec) / 1_000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_monotonic_time_is_whole_after_the_32_bit_overflow_point() {
        // On armhf the machine running the suite has been up for more than the 36 minutes
        // after which sd-notify's own computation overflowed.
        let a = super::monotonic_usec().unwrap();
        let b = super::monotonic_usec().unwrap();
        assert!(a > 0 && b >= a, "{a} {b}");
    }

    use super::*;

    #[test]
    fn watchdog_usec_without_a_pid_enables_the_watchdog() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 42),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn watchdog_usec_for_another_process_is_ignored() {
        assert_eq!(watchdog_interval(Some("30000000"), Some("41"), 42), None);
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn zero_or_garbage_watchdog_usec_disables_the_watchdog() {
        for bad in ["0", "", "-5", "30s", "1e6"] {
            assert_eq!(watchdog_interval(Some(bad), None, 1), None, "{bad:?}");
        }
        assert_eq!(watchdog_interval(None, Some("1"), 1), None);
        assert_eq!(watchdog_interval(Some("1000"), Some("x"), 1), None);
    }

    #[test]
    fn the_status_line_names_stalled_loops_first() {
        assert_eq!(status_line(&[], "link up, 0 queued"), "link up, 0 queued");
        assert_eq!(
            status_line(&["bus rtu0".into(), "uplink".into()], "link up"),
            "STALLED: bus rtu0, uplink; link up"
        );
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let n = Notifier::disabled();
        n.ready();
        n.status("x");
        n.stopping();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_timeout(), None);
    }
}
