//! systemd notify protocol without systemd: a unix datagram socket stands in for
//! `$NOTIFY_SOCKET`, and we read what the agent tells the service manager.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldlink::health::Health;
use fieldlink::systemd::{watchdog_on, Notifier};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// A fake service manager: the socket the agent's datagrams land in.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        FakeSystemd {
            socket,
            path,
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram already queued, one notify state per line.
    fn drain(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => lines.extend(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .map(str::to_string),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return lines,
                Err(e) => panic!("recv on notify socket: {e}"),
            }
        }
    }

    /// Blocks until a datagram arrives or `deadline` passes (for the real-binary test).
    fn recv_before(&self, deadline: std::time::Instant) -> Option<Vec<String>> {
        self.socket.set_nonblocking(false).unwrap();
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string)
                    .collect(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv on notify socket: {e}"),
        }
    }
}

fn pings(lines: &[String]) -> usize {
    lines.iter().filter(|l| *l == "WATCHDOG=1").count()
}

fn statuses(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("STATUS="))
        .collect()
}

// The clock is paused: every sleep below advances tokio's clock to a chosen instant, after
// all timers due before it have fired. The test's instants (x.6 s) sit between the watchdog's
// checks (whole seconds from the start: a plain interval, not the agent's wall-clock grid,
// whose phase would depend on when the test started) and the loop's ticks (every 0.25 s), so
// what has been sent by each instant is exact, not a matter of timing.
#[tokio::test(start_paused = true)]
async fn watchdog_pings_stop_while_a_loop_is_stalled_and_resume_when_it_ticks_again() {
    let systemd = FakeSystemd::bind();
    // The only test in this binary that touches the process environment; the other one
    // passes its variables to a child process explicitly.
    std::env::set_var("NOTIFY_SOCKET", systemd.path());
    std::env::set_var("WATCHDOG_USEC", "2000000"); // ping every 1 s
    std::env::remove_var("WATCHDOG_PID");
    let notifier = Notifier::from_env();
    assert_eq!(notifier.watchdog_timeout(), Some(Duration::from_secs(2)));

    let start = Instant::now();
    let at = |secs: f64| start + Duration::from_secs_f64(secs);
    let health = Health::new();
    let beat = health.register("bus rtu0", Duration::from_millis(1200));
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let ticking = ticking.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if ticking.load(Ordering::Relaxed) {
                    beat.tick();
                }
            }
        })
    };
    let link = Arc::new(Mutex::new("link connecting, 0 queued".to_string()));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(watchdog_on(
        health.clone(),
        {
            let link = link.clone();
            move || link.lock().unwrap().clone()
        },
        notifier,
        cancel.clone(),
        tokio::time::interval,
    ));

    // Healthy: a ping at 0, 1, 2, 3 s and one status line.
    sleep_until(at(3.6)).await;
    let lines = systemd.drain();
    assert_eq!(pings(&lines), 4, "{lines:?}");
    assert_eq!(statuses(&lines), ["link connecting, 0 queued"]);

    // The status closure changes: exactly one new STATUS line, pings go on.
    *link.lock().unwrap() = "link up, 0 queued".to_string();
    sleep_until(at(4.6)).await;
    let lines = systemd.drain();
    assert_eq!(statuses(&lines), ["link up, 0 queued"]);
    assert_eq!(pings(&lines), 1, "{lines:?}");

    // The loop's last tick is at 4.5 s; past its 1.2 s allowance (the check at 6 s) no more
    // pings, and the status line names it.
    ticking.store(false, Ordering::Relaxed);
    sleep_until(at(6.6)).await;
    let lines = systemd.drain();
    assert_eq!(pings(&lines), 1, "only the 5 s ping expected: {lines:?}");
    assert_eq!(statuses(&lines), ["STALLED: bus rtu0; link up, 0 queued"]);
    sleep_until(at(12.6)).await;
    let lines = systemd.drain();
    assert_eq!(pings(&lines), 0, "pinged while stalled: {lines:?}");
    assert!(statuses(&lines).is_empty(), "{lines:?}");

    // It ticks again (12.75 s): pings resume at the next checks (13, 14, 15 s), the status
    // line clears.
    ticking.store(true, Ordering::Relaxed);
    sleep_until(at(15.6)).await;
    let lines = systemd.drain();
    assert_eq!(pings(&lines), 3, "pings did not resume: {lines:?}");
    assert_eq!(statuses(&lines), ["link up, 0 queued"]);

    cancel.cancel();
    task.await.unwrap();
    ticker.abort();
}

#[test]
fn a_notifier_without_notify_socket_is_a_no_op() {
    let n = Notifier::disabled();
    n.ready();
    n.stopping();
    assert!(!n.is_enabled());
}

/// The real binary, as systemd would start it: READY without a broker, STATUS, periodic
/// WATCHDOG, RELOADING and READY again after SIGHUP, and STOPPING after SIGTERM.
#[test]
fn the_agent_reports_ready_status_watchdog_and_stopping_to_systemd() {
    let systemd = FakeSystemd::bind();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fieldlink.toml");
    // Nothing listens on this port: READY must not wait for the broker.
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"notify-test\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            support::free_port()
        ),
    )
    .unwrap();

    let mut agent = support::bin::agent_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "1000000") // ping every 0.5 s
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start fieldlink");

    let mut seen: Vec<String> = Vec::new();
    // Generous: under qemu the agent starts an order of magnitude slower.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let collect_until = |seen: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool, what: &str| {
        while !done(seen) {
            match systemd.recv_before(deadline) {
                Some(lines) => seen.extend(lines),
                None => panic!("timed out waiting for {what}; got {seen:?}"),
            }
        }
    };
    collect_until(&mut seen, &|s| s.iter().any(|l| l == "READY=1"), "READY=1");
    collect_until(
        &mut seen,
        &|s| !statuses(s).is_empty() && pings(s) >= 3,
        "STATUS= and three WATCHDOG=1",
    );

    // A reload: RELOADING=1 with the monotonic time systemd 253+ demands, then READY=1.
    let before_reload = seen.len();
    // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
    let rc = unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
    collect_until(
        &mut seen,
        &|s| {
            s[before_reload..]
                .iter()
                .skip_while(|l| *l != "RELOADING=1")
                .any(|l| l == "READY=1")
        },
        "RELOADING=1, then READY=1",
    );
    let reloading_at = before_reload
        + seen[before_reload..]
            .iter()
            .position(|l| l == "RELOADING=1")
            .unwrap();
    assert!(
        seen[reloading_at + 1].starts_with("MONOTONIC_USEC="),
        "RELOADING=1 comes with MONOTONIC_USEC= in one datagram: {seen:?}"
    );

    // SAFETY: as above.
    let rc = unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    collect_until(
        &mut seen,
        &|s| s.iter().any(|l| l == "STOPPING=1"),
        "STOPPING=1",
    );

    let status = support::wait_until_blocking("agent exit", Duration::from_secs(10), || {
        agent.try_wait().unwrap()
    });
    assert!(
        status.success(),
        "agent exited with {status}; notify: {seen:?}"
    );
    let ready_at = seen.iter().position(|l| l == "READY=1").unwrap();
    let stopping_at = seen.iter().position(|l| l == "STOPPING=1").unwrap();
    assert!(ready_at < stopping_at, "{seen:?}");
}
