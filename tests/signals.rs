//! Signals sent to the real `fieldlink run`: SIGHUP reloads the configuration (tests/reload.rs
//! covers what a reload changes) and SIGUSR1, SIGUSR2, SIGPIPE are logged and ignored, while
//! readings keep flowing, at any moment from the start of the process; SIGTERM still stops it
//! cleanly afterwards. Each test has its own broker, Modbus
//! device and topic prefix; every wait has a deadline.
mod support;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use support::agent::{self, Agent, Lines};
use support::modbus::{self, Bank, SimDevice};
use support::watch::Watch;
use support::Broker;

const FIRST_READING: Duration = Duration::from_secs(15);

fn device_config(broker_port: u16, prefix: &str, modbus_address: &str) -> String {
    format!(
        r#"{head}
[[bus]]
name = "tcp0"
type = "modbus_tcp"
address = "{modbus_address}"
timeout = "300ms"

[[device]]
name = "m1"
bus = "tcp0"
unit = 1
interval = "100ms"

[[device.point]]
name = "level"
table = "holding"
address = 0
type = "u16"
"#,
        head = agent::head(broker_port, prefix)
    )
}

fn counter_device() -> SimDevice {
    let d = SimDevice::new(1);
    d.set_registers(Bank::Holding, 0, &[7]);
    d
}

/// Waits until `count` more readings than `seen` arrived on `topic`: the agent is still
/// polling and publishing. `exited` says whether (and how) the agent ended meanwhile, which
/// fails the test at once, naming the signal that ended it.
async fn readings_keep_flowing(
    watch: &Watch,
    topic: &str,
    seen: usize,
    count: usize,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) {
    support::wait_until(
        &format!("{count} more readings on {topic} after the signal"),
        FIRST_READING,
        || {
            if let Some(status) = exited() {
                panic!("the agent ended after the signal: {status}");
            }
            (watch.on(topic).len() >= seen + count).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn sighup_reloads_an_unchanged_file_and_readings_keep_flowing_until_sigterm() {
    let broker = Broker::start();
    let prefix = agent::prefix("sighup");
    let sim = modbus::serve_tcp(&[&counter_device()]).await;
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&device_config(broker.port, &prefix, &sim.address()));
    let topic = format!("{prefix}/m1/level");
    watch.wait_for(&topic, FIRST_READING, |_| true).await;

    let before = watch.on(&topic).len();
    agent.signal(libc::SIGHUP);
    readings_keep_flowing(&watch, &topic, before, 5, || agent.try_exit()).await;
    agent
        .wait_stderr(
            "the reload of an unchanged file",
            Duration::from_secs(5),
            |l| l.contains("configuration reloaded: nothing changed"),
        )
        .await;

    agent.sigterm();
    let exit = agent.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit:?}");
    support::expect::status(
        &watch,
        &format!("{prefix}/status"),
        "offline",
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn sigusr1_sigusr2_and_sigpipe_do_not_kill_the_agent() {
    let broker = Broker::start();
    let prefix = agent::prefix("sigusr");
    let sim = modbus::serve_tcp(&[&counter_device()]).await;
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&device_config(broker.port, &prefix, &sim.address()));
    let topic = format!("{prefix}/m1/level");
    watch.wait_for(&topic, FIRST_READING, |_| true).await;

    for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGPIPE] {
        let before = watch.on(&topic).len();
        agent.signal(sig);
        readings_keep_flowing(&watch, &topic, before, 3, || agent.try_exit()).await;
    }
    for name in ["SIGUSR1", "SIGUSR2"] {
        agent
            .wait_stderr(&format!("{name} logged"), Duration::from_secs(5), |l| {
                l.contains(name) && l.contains("ignored")
            })
            .await;
    }

    agent.sigterm();
    let exit = agent.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit:?}");
}

/// True once the process `pid` blocks or catches `sig` (its main thread's masks in
/// /proc/PID/status): from then on the signal cannot end it by its default action, and is not
/// lost. An ignore does not count: it is inherited from whoever started the tests (`nohup`
/// sets SIGHUP to ignored), and an ignored signal sent before `main` blocks it is discarded.
fn takes_charge_of(pid: u32, sig: libc::c_int) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (sig - 1);
    status.lines().any(|line| {
        ["SigBlk:", "SigCgt:"].iter().any(|field| {
            line.strip_prefix(field)
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & bit != 0)
        })
    })
}

/// `fieldlink run` on a config path that is a FIFO: the agent blocks reading its config until
/// the test writes it, so a signal sent before that provably arrives before the config is
/// loaded, the buses started and READY.
struct BlockedAgent {
    child: Child,
    stderr: Lines,
    fifo: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl BlockedAgent {
    fn spawn() -> BlockedAgent {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fieldlink.toml");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path we own.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo {}", fifo.display());
        let mut child = agent::command(&["run", "--config", fifo.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Lines::capture(child.stderr.take().unwrap(), "agent stderr");
        BlockedAgent {
            child,
            stderr,
            fifo,
            _dir: dir,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet waited for.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0);
    }

    /// Writes the config into the FIFO: the agent reads it and starts. A blocking open would
    /// wait forever for a reader that died (the signal killed it), so the open is non-blocking
    /// (ENXIO while nobody reads) and retried until a deadline, reporting how the agent ended.
    fn feed(&mut self, toml: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut writer = support::wait_until_blocking(
            "the agent to open its config FIFO for reading",
            Duration::from_secs(10),
            || {
                if let Some(exit) = self.child.try_wait().unwrap() {
                    panic!(
                        "the agent ended before reading its config: {exit:?}\n{}",
                        self.stderr.text()
                    );
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.fifo)
                    .ok()
            },
        );
        // The config is far smaller than a pipe buffer, so a non-blocking write takes it whole.
        writer.write_all(toml.as_bytes()).unwrap();
    }
}

impl Drop for BlockedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- agent stderr ----\n{}", self.stderr.text());
        }
    }
}

#[tokio::test]
async fn a_sighup_before_the_config_is_even_read_does_not_kill_the_agent() {
    let broker = Broker::start();
    let prefix = agent::prefix("early-hup");
    let sim = modbus::serve_tcp(&[&counter_device()]).await;
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = BlockedAgent::spawn();
    let pid = agent.child.id();

    // The earliest moment a program can protect itself is its first instruction in `main`;
    // before that (the dynamic loader) no program can, so the test waits for that moment.
    support::wait_until(
        "the agent to block or catch SIGHUP",
        Duration::from_secs(10),
        || takes_charge_of(pid, libc::SIGHUP).then_some(()),
    )
    .await;
    agent.signal(libc::SIGHUP);
    agent.feed(&device_config(broker.port, &prefix, &sim.address()));

    let topic = format!("{prefix}/m1/level");
    readings_keep_flowing(&watch, &topic, 0, 5, || agent.child.try_wait().unwrap()).await;
    // Not lost either: it was held until the handler existed, then asked for a reload once
    // the agent was READY (the config is a FIFO here, which a reload refuses to read).
    let stderr = agent.stderr.clone();
    support::wait_until(
        "the reload of the early SIGHUP",
        Duration::from_secs(5),
        || {
            stderr
                .any(|l| l.contains("configuration reload refused"))
                .then_some(())
        },
    )
    .await;
    assert!(
        stderr.any(|l| l.contains("not a regular file")),
        "{}",
        stderr.text()
    );

    agent.signal(libc::SIGTERM);
    let exit = support::wait_until("the agent to exit", Duration::from_secs(5), || {
        agent.child.try_wait().unwrap()
    })
    .await;
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit:?}");
}
