//! The chaos soak engine (issue 10, item 8): the real `fieldlink run` binary with ten devices
//! behind it and mosquitto behind the fault proxy, a seeded fault injector, and the
//! end-of-run accounting that proves every reading was delivered or counted dropped.
//!
//! Shared by the short soak run by `cargo test` (tests/soak.rs) and the long one
//! (`cargo bench --bench soak -- --minutes N`, benches/soak.rs). The caller's crate must
//! declare `mod support;` next to `mod chaos;`.
//!
//! Faults run one at a time: inject, hold, heal, then wait for the recovery (a fresh reading
//! from an affected device, i.e. one the agent took after the heal) before the next gap.
//! Serialising them keeps every invariant exact and every recovery time attributable.
//!
//! Accounting. A reading is `(boot, seq)`; within a boot seq is dense, so for each boot the
//! readings below its highest delivered seq that never arrived are the losses, and their
//! sum over all boots must equal the buffer's dropped counter (`fieldlink buffer stats`).
//! A boot ended by SIGKILL also loses an invisible tail: with `durability = "always"` every
//! reading is committed before it is published, so a crash loses only readings not yet
//! committed, i.e. taken in the last `commit_interval` before the kill. No seq of that tail
//! was ever seen, so what is checked is that nothing inside the boot is missing (the loss
//! is a suffix) and that the newest delivered reading of the boot was taken at most
//! `commit_interval` + one poll interval + [`TAIL_SLACK`] before the kill.
//!
//! Duplicates are allowed (at-least-once) and put down to the fault before them: an agent
//! SIGKILL replays what was acknowledged but not yet deleted (deletes are batched, 256 or
//! every 10 s), a broker restart without persistence gets the retained set again, a lost
//! PUBACK a resend.
//!
//! A broker killed without persistence loses what it acknowledged but had not yet forwarded
//! to the subscriber. To keep the count exact the kill is quiesced: blackhole the agent's
//! path, wait until the agent gave the link up (it dials again), kill and restart the broker,
//! wait until the subscriber subscribed again, then open the path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_modbus::prelude::ExceptionCode;
use tokio_serial::SerialStream;

use crate::support::agent::{Agent, ConfigDir};
use crate::support::modbus::{self, Bank, Behaviour, Habit, RtuSim, SimDevice, TcpSim};
use crate::support::mount::Mount;
use crate::support::proxy::{Mode, Proxy};
use crate::support::pty::PtyPair;
use crate::support::watch::{Message, Watch};
use crate::support::Broker;

/// Every reading is committed before it is published, one batch per this interval: the
/// most a SIGKILL can lose.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Every device is polled once per [`POLL`] and `ts` is taken when a poll starts, so the
/// newest committed reading can precede a kill by the commit interval plus one poll
/// interval, plus this for scheduling on a busy machine.
const TAIL_SLACK: Duration = Duration::from_millis(1500);
/// RSS may grow by less than this over one agent process (after its warm-up).
const RSS_BUDGET_KIB: i64 = 1024;
/// The agent's reconnect backoff ceiling (uplink default `backoff_max`). Its failure count
/// resets only after a connection stayed up a minute, so when link faults come more often
/// than that (they do here) a reconnect may wait this long: see README, "Chaos soak".
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a heal may take to show as a fresh reading before it counts as a failure: a
/// reconnect after the longest backoff, its connect and the first poll after it.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(75);
/// How long the agent may take to dial again into a blackhole: dead-link verdict (1.5 x
/// keep-alive) or, if it was between attempts, the rest of its backoff.
const REDIAL_DEADLINE: Duration = Duration::from_secs(75);
const _: () = assert!(RECOVERY_DEADLINE.as_secs() > BACKOFF_MAX.as_secs());
const POLL: &str = "1s";
/// How long a fault may take to show in the agent's log (SIGHUP, clock step, disk full).
const EFFECT_DEADLINE: Duration = Duration::from_secs(10);
/// The wall-clock step a clock fault applies (forward, as an NTP sync after boot does).
const CLOCK_STEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    BrokerKill,
    Blackhole,
    Reset,
    DeviceSilence,
    ExceptionBurst,
    SerialUnplug,
    AgentKill,
    Sighup,
    ClockStep,
    DiskFull,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::BrokerKill,
        Kind::Blackhole,
        Kind::Reset,
        Kind::DeviceSilence,
        Kind::ExceptionBurst,
        Kind::SerialUnplug,
        Kind::AgentKill,
        Kind::Sighup,
        Kind::ClockStep,
        Kind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::BrokerKill => "broker SIGKILL + restart",
            Kind::Blackhole => "blackhole, dropped at resume",
            Kind::Reset => "connection reset",
            Kind::DeviceSilence => "device silence",
            Kind::ExceptionBurst => "exception burst",
            Kind::SerialUnplug => "serial unplug/replug",
            Kind::AgentKill => "agent SIGKILL + restart",
            Kind::Sighup => "SIGHUP",
            Kind::ClockStep => "clock step +1h",
            Kind::DiskFull => "state disk full",
        }
    }
}

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// Inject faults until this much time has passed (the last one still completes).
    pub duration: Duration,
    /// Every kind once, in a seeded order, before any repeats (the short mode wants them all).
    pub each_kind_first: bool,
    /// Stop after this many faults (the short mode: one of each kind).
    pub max_faults: Option<usize>,
    /// Pause before each fault, drawn from this range.
    pub gap: (Duration, Duration),
    /// How long a fault lasts before it is healed, drawn from this range.
    pub hold: (Duration, Duration),
    /// An agent process's RSS baseline is taken once it has run this long.
    pub warm_up: Duration,
    /// After the last fault: how long the backlog may take to drain.
    pub drain_deadline: Duration,
}

impl Settings {
    /// The seed from `FIELDLINK_SOAK_SEED`, else `default`.
    pub fn seed_from_env(default: u64) -> u64 {
        std::env::var("FIELDLINK_SOAK_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(default)
    }
}

#[derive(Debug, Default, Clone)]
pub struct KindStats {
    pub injected: u32,
    /// Disk full only: how many times the agent needed the disk meanwhile and said so.
    pub noticed: Option<u32>,
    /// Readings that arrived again, from the fault's start to the next fault's.
    pub duplicates: u64,
    pub skipped: Option<String>,
    pub worst_recovery: Option<Duration>,
    /// Recoveries that missed [`RECOVERY_DEADLINE`] (violations; not in `worst_recovery`).
    pub timed_out: u32,
}

/// One agent process's memory: VmRSS after warm-up and at its last quiet moment.
#[derive(Debug, Clone)]
pub struct RssSpan {
    pub pid: i32,
    pub start_kib: Option<u64>,
    pub end_kib: Option<u64>,
    pub lived: Duration,
}

impl RssSpan {
    pub fn growth_kib(&self) -> Option<i64> {
        Some(self.end_kib? as i64 - self.start_kib? as i64)
    }
}

/// What a soak saw; [`Report::violations`] lists the invariants that failed.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub wall: Duration,
    pub kinds: BTreeMap<Kind, KindStats>,
    pub produced: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicates: u64,
    pub boots: usize,
    pub killed_boots: Vec<KilledBoot>,
    pub rss: Vec<RssSpan>,
    pub violations: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct KilledBoot {
    pub boot: u64,
    /// Kill time minus the `ts` of the newest reading of that boot that was delivered.
    pub tail: Duration,
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "chaos soak: seed {} (replay: FIELDLINK_SOAK_SEED={}), {:.0} s wall, {} agent boots",
            self.seed,
            self.seed,
            self.wall.as_secs_f64(),
            self.boots
        );
        let _ = writeln!(
            t,
            "| fault | injected | worst recovery | duplicates after it |"
        );
        let _ = writeln!(t, "|---|---|---|---|");
        for (kind, s) in &self.kinds {
            let worst = match (&s.skipped, s.worst_recovery) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, Some(d)) => format!("{:.2} s", d.as_secs_f64()),
                (None, None) => "-".into(),
            };
            let worst = match s.timed_out {
                0 => worst,
                n => format!(
                    "> {} s ({n} times); else {worst}",
                    RECOVERY_DEADLINE.as_secs()
                ),
            };
            let injected = match s.noticed {
                Some(n) => format!("{} (the agent noticed {n})", s.injected),
                None => s.injected.to_string(),
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                kind.name(),
                injected,
                worst,
                s.duplicates
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "| readings | count |");
        let _ = writeln!(t, "|---|---|");
        let _ = writeln!(
            t,
            "| produced (highest seq of each boot, summed) | {} |",
            self.produced
        );
        let _ = writeln!(
            t,
            "| delivered (distinct (boot, seq)) | {} |",
            self.delivered
        );
        let _ = writeln!(t, "| counted dropped | {} |", self.dropped);
        let _ = writeln!(t, "| duplicates (at-least-once) | {} |", self.duplicates);
        let worst_tail = self.killed_boots.iter().max_by_key(|k| k.tail);
        let _ = writeln!(
            t,
            "| boots ended by SIGKILL / longest kill-to-newest-delivered tail | {} / {} |",
            self.killed_boots.len(),
            worst_tail.map_or("-".into(), |k| format!(
                "{} ms (boot {})",
                k.tail.as_millis(),
                k.boot
            ))
        );
        let longest = self
            .rss
            .iter()
            .filter(|r| r.growth_kib().is_some())
            .max_by_key(|r| r.lived);
        let worst = self.rss.iter().filter_map(|r| r.growth_kib()).max();
        if let Some(r) = longest {
            let _ = writeln!(
                t,
                "| RSS start / end (longest-lived agent, {:.0} s) | {} KiB / {} KiB |",
                r.lived.as_secs_f64(),
                r.start_kib.unwrap_or(0),
                r.end_kib.unwrap_or(0)
            );
        }
        if let Some(w) = worst {
            let _ = writeln!(t, "| worst RSS growth of any agent process | {w} KiB |");
        }
        if self.violations.is_empty() {
            let _ = writeln!(t, "\ninvariants: all hold");
        } else {
            let _ = writeln!(t, "\nINVARIANTS VIOLATED:");
            for v in &self.violations {
                let _ = writeln!(t, "- {v}");
            }
        }
        t
    }
}

// ------------------------------------------------------------------------ the rig

/// A streaming serial_line sensor on a pty reached through a fixed link, that can be
/// unplugged (link removed, both ends closed) and plugged in again.
struct Sensor {
    plugged: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sensor {
    fn start(link: PathBuf) -> Sensor {
        let (plugged, mut rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            let mut port: Option<(SerialStream, SerialStream)> = None;
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            loop {
                let want = *rx.borrow_and_update();
                if want && port.is_none() {
                    let (master, slave) = SerialStream::pair().expect("openpty");
                    let name = tokio_serial::SerialPort::name(&slave).expect("pty name");
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&name, &link).expect("symlink to the pty");
                    port = Some((master, slave));
                } else if !want && port.is_some() {
                    let _ = std::fs::remove_file(&link);
                    port = None;
                }
                if let Some((master, _)) = port.as_mut() {
                    n += 1;
                    let line = format!("S,{n},{}\n", n as f64 * 0.5);
                    let _ = master.write_all(line.as_bytes()).await;
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
        Sensor { plugged, task }
    }

    fn set_plugged(&self, on: bool) {
        self.plugged.send_replace(on);
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The RS-485 line: a socat pty pair and the RTU sim on its far end.
struct RtuLine {
    sim_path: PathBuf,
    agent_path: PathBuf,
    pair: Option<PtyPair>,
    sim: Option<RtuSim>,
    devices: Vec<SimDevice>,
}

impl RtuLine {
    fn plug(&mut self) {
        let pair = tokio::task::block_in_place(|| PtyPair::at(&self.sim_path, &self.agent_path));
        let refs: Vec<&SimDevice> = self.devices.iter().collect();
        self.sim = Some(modbus::serve_rtu(&pair.sim, 19200, &refs));
        self.pair = Some(pair);
    }

    async fn unplug(&mut self) {
        if let Some(sim) = self.sim.take() {
            sim.stop().await;
        }
        if let Some(mut pair) = self.pair.take() {
            tokio::task::block_in_place(|| pair.unplug());
        }
    }
}

/// libfaketime, preloaded into the agent so that its wall clock (only: the monotonic and
/// boot-time clocks stay real) follows an offset kept in a file the soak rewrites.
struct FakeClock {
    lib: PathBuf,
    file: PathBuf,
    offset: Duration,
}

impl FakeClock {
    fn find() -> Result<PathBuf, String> {
        let candidates = std::fs::read_dir("/usr/lib")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        candidates
            .into_iter()
            .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
            .find(|p| p.exists())
            .ok_or_else(|| "libfaketime is not installed (apt install libfaketime)".to_string())
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.file.display().to_string(),
            ),
            // The file is read again at most once a second, not on every clock read.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    fn write(&self) {
        std::fs::write(&self.file, format!("+{}\n", self.offset.as_secs())).unwrap();
    }
}

/// The state directory on a small tmpfs, so that it can be filled.
struct Disk {
    _mount: Mount,
    filler: PathBuf,
}

impl Disk {
    fn fill(&self) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.filler)?;
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                return if e.raw_os_error() == Some(libc::ENOSPC) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        }
    }

    fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

/// A reading as the subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    boot: u64,
    seq: u64,
    ts_ms: i64,
    good: bool,
}

fn parse(m: &Message) -> Option<Seen> {
    let j = m.json();
    Some(Seen {
        topic: m.topic.clone(),
        boot: j.get("boot")?.as_u64()?,
        seq: j.get("seq")?.as_u64()?,
        ts_ms: j.get("ts")?.as_i64()?,
        good: j.get("quality").is_none() && !j.get("value")?.is_null(),
    })
}

fn poll_interval() -> Duration {
    humantime::parse_duration(POLL).unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Rig {
    broker: Broker,
    proxy: Proxy,
    watch: Watch,
    agent: Agent,
    prefix: String,
    /// Device name → (sim handle, which bus).
    modbus: Vec<(String, SimDevice)>,
    _tcp: Vec<TcpSim>,
    rtu: RtuLine,
    rtu_devices: Vec<String>,
    sensors: Vec<(String, Sensor)>,
    clock: Result<FakeClock, String>,
    disk: Result<Disk, String>,
    ticker: JoinHandle<()>,
    /// Disk-full faults during which the agent reported its store unusable.
    disk_noticed: u32,
    _config_home: tempfile::TempDir,
    _serial_dir: tempfile::TempDir,
    /// Per agent process: pid, start, RSS span.
    rss: Vec<RssSpan>,
    agent_started: Instant,
    kills: Vec<(u64, i64)>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

fn device_toml(name: &str, bus: &str, unit: u8) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
bus = "{bus}"
unit = {unit}
interval = "{POLL}"

[[device.point]]
name = "a"
table = "holding"
address = 0
type = "u16"

[[device.point]]
name = "b"
table = "holding"
address = 1
type = "u16"
"#
    )
}

fn sensor_toml(name: &str, path: &Path) -> String {
    format!(
        r#"
[[bus]]
name = "{name}-port"
type = "serial_line"
path = "{path}"

[[device]]
name = "{name}"
bus = "{name}-port"
interval = "{POLL}"
stale_after = "3s"

[[device.point]]
name = "count"
delimiter = ","
field = 1
type = "integer"

[[device.point]]
name = "level"
delimiter = ","
field = 2
type = "number"
"#,
        path = path.display()
    )
}

impl Rig {
    async fn start() -> Rig {
        let broker = tokio::task::block_in_place(Broker::start);
        let proxy = Proxy::start(broker.port).await;
        let prefix = crate::support::agent::prefix("soak");
        let watch = Watch::start_surviving_restarts(broker.port, &format!("{prefix}/#")).await;

        let new_device = |unit: u8| {
            let d = SimDevice::new(unit);
            d.set_registers(Bank::Holding, 0, &[unit as u16, 0]);
            d
        };
        // Two ordinary Modbus TCP endpoints with two units each, and a gateway that closes
        // the connection after every reply.
        let (m1, m2, m3, m4, m5) = (
            new_device(1),
            new_device(2),
            new_device(1),
            new_device(2),
            new_device(1),
        );
        let tcp_a = modbus::serve_tcp(&[&m1, &m2]).await;
        let tcp_b = modbus::serve_tcp(&[&m3, &m4]).await;
        let tcp_c = modbus::serve_tcp_with(&[&m5], Habit::CloseAfterReply).await;
        let (r1, r2, r3) = (new_device(1), new_device(2), new_device(3));

        let serial_dir = tempfile::tempdir().unwrap();
        let mut rtu = RtuLine {
            sim_path: serial_dir.path().join("rtu-sim"),
            agent_path: serial_dir.path().join("rtu-agent"),
            pair: None,
            sim: None,
            devices: vec![r1.clone(), r2.clone(), r3.clone()],
        };
        rtu.plug();
        let sensors: Vec<(String, Sensor)> = ["s1", "s2"]
            .iter()
            .map(|n| {
                let link = serial_dir.path().join(format!("{n}-tty"));
                (n.to_string(), Sensor::start(link))
            })
            .collect();
        crate::support::wait_until("sensor pty links", Duration::from_secs(10), || {
            ["s1", "s2"]
                .iter()
                .all(|n| serial_dir.path().join(format!("{n}-tty")).exists())
                .then_some(())
        })
        .await;

        let mut toml = format!(
            r#"[gateway]
id = "{id}"

[mqtt]
host = "127.0.0.1"
port = {proxy}
keep_alive = "2s"
prefix = "{prefix}"

[buffer]
durability = "always"
commit_interval = "{ci}ms"

[[bus]]
name = "plc"
type = "modbus_tcp"
address = "{a}"
timeout = "500ms"

[[bus]]
name = "meters"
type = "modbus_tcp"
address = "{b}"
timeout = "500ms"

[[bus]]
name = "gateway"
type = "modbus_tcp"
address = "{c}"
timeout = "500ms"

[[bus]]
name = "rs485"
type = "modbus_rtu"
path = "{rtu}"
baud = 19200
response_timeout = "200ms"
"#,
            id = crate::support::unique("soak-gw"),
            proxy = proxy.port,
            ci = COMMIT_INTERVAL.as_millis(),
            a = tcp_a.address(),
            b = tcp_b.address(),
            c = tcp_c.address(),
            rtu = rtu.agent_path.display(),
        );
        for (name, bus, unit) in [
            ("m1", "plc", 1),
            ("m2", "plc", 2),
            ("m3", "meters", 1),
            ("m4", "meters", 2),
            ("m5", "gateway", 1),
            ("r1", "rs485", 1),
            ("r2", "rs485", 2),
            ("r3", "rs485", 3),
        ] {
            toml.push_str(&device_toml(name, bus, unit));
        }
        for (name, _) in &sensors {
            toml.push_str(&sensor_toml(
                name,
                &serial_dir.path().join(format!("{name}-tty")),
            ));
        }

        // The config lives apart from the state directory, which goes on a tmpfs to be
        // filled when this process may mount one.
        let config_home = tempfile::tempdir().unwrap();
        let config_path = config_home.path().join("fieldlink.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let state = tempfile::tempdir().unwrap();
        let disk = tokio::task::block_in_place(|| {
            Mount::tmpfs(state.path(), "size=16m,mode=0755")
                .map(|m| Disk {
                    _mount: m,
                    filler: state.path().join("filler"),
                })
                .ok_or_else(|| "cannot mount a tmpfs (needs root / CAP_SYS_ADMIN)".to_string())
        });
        let clock = FakeClock::find().map(|lib| FakeClock {
            lib,
            file: config_home.path().join("faketime"),
            offset: Duration::ZERO,
        });
        let mut env: Vec<(String, String)> = vec![("RUST_LOG".into(), "info".into())];
        if let Ok(c) = &clock {
            c.write();
            env.extend(c.env());
        }
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = ConfigDir {
            dir: state,
            path: config_path,
        };
        let agent = Agent::start_with_env(config, &[], &env_refs);

        // Registers move, so that a stale retained value cannot pass for the newest one.
        let moving: Vec<SimDevice> = vec![&m1, &m2, &m3, &m4, &m5, &r1, &r2, &r3]
            .into_iter()
            .cloned()
            .collect();
        let ticker = tokio::spawn(async move {
            let mut n: u16 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                n = n.wrapping_add(1);
                for d in &moving {
                    d.set_registers(Bank::Holding, 1, &[n]);
                }
            }
        });

        let modbus = vec![
            ("m1".to_string(), m1),
            ("m2".to_string(), m2),
            ("m3".to_string(), m3),
            ("m4".to_string(), m4),
            ("m5".to_string(), m5),
            ("r1".to_string(), r1),
            ("r2".to_string(), r2),
            ("r3".to_string(), r3),
        ];
        let pid = agent.pid();
        Rig {
            broker,
            proxy,
            watch,
            agent,
            prefix,
            modbus,
            _tcp: vec![tcp_a, tcp_b, tcp_c],
            rtu,
            rtu_devices: vec!["r1".into(), "r2".into(), "r3".into()],
            sensors,
            clock,
            disk,
            ticker,
            disk_noticed: 0,
            _config_home: config_home,
            _serial_dir: serial_dir,
            rss: vec![RssSpan {
                pid,
                start_kib: None,
                end_kib: None,
                lived: Duration::ZERO,
            }],
            agent_started: Instant::now(),
            kills: Vec::new(),
        }
    }

    fn all_devices(&self) -> Vec<String> {
        self.modbus
            .iter()
            .map(|(n, _)| n.clone())
            .chain(self.sensors.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    fn offset_ms(&self) -> i64 {
        self.clock
            .as_ref()
            .map_or(0, |c| c.offset.as_millis() as i64)
    }

    /// Waits for a good reading of one of `devices` taken after `since_ms` (real time),
    /// looking at messages from index `from` on; returns how long that took from `healed`.
    async fn fresh_reading(
        &self,
        devices: &[String],
        from: usize,
        since_ms: i64,
        healed: Instant,
    ) -> Result<Duration, String> {
        let topics: Vec<String> = devices
            .iter()
            .map(|d| format!("{}/{d}/", self.prefix))
            .collect();
        let agent_since = since_ms + self.offset_ms();
        let mut cursor = from;
        loop {
            let msgs = self.watch.messages.lock().unwrap()[cursor..].to_vec();
            cursor += msgs.len();
            let hit = msgs.iter().filter_map(parse).any(|s| {
                s.good && s.ts_ms >= agent_since && topics.iter().any(|t| s.topic.starts_with(t))
            });
            if hit {
                return Ok(healed.elapsed());
            }
            if healed.elapsed() > RECOVERY_DEADLINE {
                return Err(format!(
                    "no fresh reading from {devices:?} within {RECOVERY_DEADLINE:?} of the heal"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Samples the current agent's RSS at a quiet moment: the baseline once it is warm,
    /// else the latest value.
    fn sample_rss(&mut self, warm_up: Duration) {
        let pid = self.agent.pid();
        let lived = self.agent_started.elapsed();
        let span = self.rss.last_mut().unwrap();
        if lived < warm_up {
            return;
        }
        if let Some(kib) = rss_kib(pid) {
            if span.start_kib.is_none() {
                span.start_kib = Some(kib);
                span.lived = Duration::ZERO;
            } else {
                span.end_kib = Some(kib);
                span.lived = lived;
            }
        }
    }

    /// Injects one fault, holds it, heals it; `Err` with the reason when it cannot be done
    /// here. Returns the devices whose fresh reading proves the recovery, and the heal time.
    async fn inject(
        &mut self,
        kind: Kind,
        hold: Duration,
        rng: &mut fastrand::Rng,
    ) -> Result<(Vec<String>, Instant, i64), String> {
        let all = self.all_devices();
        match kind {
            Kind::BrokerKill => {
                self.proxy.set(Mode::Blackhole);
                let dialed = self.proxy.accepted();
                // The agent dials again once it has declared the link dead (1.5 x keep-alive).
                let gave_up = poll_for(REDIAL_DEADLINE, || {
                    (self.proxy.accepted() > dialed).then_some(())
                })
                .await;
                let subacks = self.watch.subacks();
                if gave_up.is_some() {
                    tokio::task::block_in_place(|| self.broker.restart());
                }
                let back = poll_for(EFFECT_DEADLINE, || {
                    (self.watch.subacks() > subacks).then_some(())
                })
                .await;
                tokio::time::sleep(hold).await;
                self.proxy.set(Mode::Pass);
                self.proxy.drop_blackholed();
                if gave_up.is_none() {
                    return Err(format!(
                        "EFFECT: the agent did not dial again into the blackhole within {REDIAL_DEADLINE:?}"
                    ));
                }
                if back.is_none() {
                    return Err(format!(
                        "EFFECT: the subscriber did not subscribe again within {EFFECT_DEADLINE:?}"
                    ));
                }
            }
            Kind::Blackhole => {
                self.proxy.set(Mode::Blackhole);
                tokio::time::sleep(hold).await;
                self.proxy.set(Mode::Pass);
                self.proxy.drop_blackholed();
            }
            Kind::Reset => self.proxy.reset_all(),
            Kind::DeviceSilence | Kind::ExceptionBurst => {
                let (name, dev) = &self.modbus[rng.usize(..self.modbus.len())];
                dev.set_behaviour(if kind == Kind::DeviceSilence {
                    Behaviour::Silent
                } else {
                    Behaviour::Exception(ExceptionCode::ServerDeviceBusy)
                });
                tokio::time::sleep(hold).await;
                dev.set_behaviour(Behaviour::Normal);
                return Ok((vec![name.clone()], Instant::now(), now_ms()));
            }
            Kind::SerialUnplug => {
                let which = rng.usize(..=self.sensors.len());
                let affected = if which == self.sensors.len() {
                    self.rtu.unplug().await;
                    tokio::time::sleep(hold).await;
                    self.rtu.plug();
                    self.rtu_devices.clone()
                } else {
                    let (name, sensor) = &self.sensors[which];
                    sensor.set_plugged(false);
                    tokio::time::sleep(hold).await;
                    sensor.set_plugged(true);
                    vec![name.clone()]
                };
                return Ok((affected, Instant::now(), now_ms()));
            }
            Kind::AgentKill => {
                let boot = self.current_boot();
                self.agent.sigkill();
                let killed_at = now_ms() + self.offset_ms();
                if let Some(b) = boot {
                    self.kills.push((b, killed_at));
                }
                self.agent.restart();
                self.agent_started = Instant::now();
                self.rss.push(RssSpan {
                    pid: self.agent.pid(),
                    start_kib: None,
                    end_kib: None,
                    lived: Duration::ZERO,
                });
            }
            Kind::Sighup => {
                let before = self.log_count("SIGHUP");
                self.agent.signal(libc::SIGHUP);
                self.log_effect("SIGHUP", before, "a logged SIGHUP").await?;
            }
            Kind::ClockStep => {
                let clock = self.clock.as_mut().map_err(|e| e.clone())?;
                clock.offset += CLOCK_STEP;
                clock.write();
                let before = self.log_count("wall clock stepped");
                self.log_effect("wall clock stepped", before, "the step logged")
                    .await?;
            }
            Kind::DiskFull => {
                let disk = self.disk.as_ref().map_err(|e| e.clone())?;
                let before = self.log_count("disk buffer unavailable");
                disk.fill()
                    .map_err(|e| format!("cannot fill the tmpfs: {e}"))?;
                // The agent only notices when it needs a new block: once its WAL has grown,
                // commits reuse its pages, so a full disk may well not disturb it at all. It
                // says so once per spell, and a spell that began in an earlier fault (the
                // store is retried every 30 s) may still be on.
                let deadline = Instant::now() + hold;
                let noticed = poll_for(hold, || {
                    (self.log_count("disk buffer unavailable") > before || self.disk_error_on())
                        .then_some(())
                })
                .await
                .is_some();
                tokio::time::sleep_until(deadline.into()).await;
                let disk = self.disk.as_ref().map_err(|e| e.clone())?;
                disk.free();
                self.disk_noticed += u32::from(noticed);
            }
        }
        Ok((all, Instant::now(), now_ms()))
    }

    /// Lines of the running agent's stderr that contain `needle`.
    fn log_count(&self, needle: &str) -> usize {
        self.agent
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the running agent logged `needle` once more than `before` times: a
    /// fault that did not take effect would make a soak pass that proved nothing.
    async fn log_effect(&self, needle: &str, before: usize, what: &str) -> Result<(), String> {
        match poll_for(EFFECT_DEADLINE, || {
            (self.log_count(needle) > before).then_some(())
        })
        .await
        {
            Some(()) => Ok(()),
            None => Err(format!("EFFECT: no {what} within {EFFECT_DEADLINE:?}")),
        }
    }

    /// Whether the running agent's last word on its store was that the disk is unusable.
    fn disk_error_on(&self) -> bool {
        self.agent
            .stderr
            .snapshot()
            .iter()
            .rev()
            .find(|l| l.contains("disk buffer unavailable") || l.contains("buffer store"))
            .is_some_and(|l| l.contains("disk buffer unavailable"))
    }

    fn current_boot(&self) -> Option<u64> {
        self.watch
            .snapshot()
            .iter()
            .filter_map(parse)
            .map(|s| s.boot)
            .max()
    }
}

// ------------------------------------------------------------------------ the run

pub async fn run(settings: Settings) -> Report {
    let started = Instant::now();
    eprintln!(
        "chaos soak: seed {} (set FIELDLINK_SOAK_SEED to replay)",
        settings.seed
    );
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let mut rig = Rig::start().await;
    let mut report = Report {
        seed: settings.seed,
        ..Report::default()
    };
    for k in Kind::ALL {
        report.kinds.insert(k, KindStats::default());
    }

    // Every device publishes before the first fault.
    let all = rig.all_devices();
    for d in &all {
        if let Err(e) = rig
            .fresh_reading(std::slice::from_ref(d), 0, 0, Instant::now())
            .await
        {
            report.violations.push(format!("before any fault: {e}"));
        }
    }

    let mut order: Vec<Kind> = Vec::new();
    if settings.each_kind_first {
        order = Kind::ALL.to_vec();
        rng.shuffle(&mut order);
    }
    let draw = |rng: &mut fastrand::Rng, (lo, hi): (Duration, Duration)| {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rng.u64(0..=span))
    };
    let mut done = 0usize;
    let mut pending = order.into_iter();
    // Where each fault's messages begin, to put duplicates down to the fault before them.
    let mut windows: Vec<(usize, Kind)> = Vec::new();
    loop {
        if settings.max_faults.is_some_and(|m| done >= m) || started.elapsed() >= settings.duration
        {
            break;
        }
        let kind = pending
            .next()
            .unwrap_or_else(|| Kind::ALL[rng.usize(..Kind::ALL.len())]);
        let gap = draw(&mut rng, settings.gap);
        let hold = draw(&mut rng, settings.hold);
        tokio::time::sleep(gap).await;
        let from = rig.watch.messages.lock().unwrap().len();
        windows.push((from, kind));
        let t0 = Instant::now();
        match rig.inject(kind, hold, &mut rng).await {
            Err(why) if why.starts_with("EFFECT") => {
                eprintln!("chaos soak: VIOLATION {}: {why}", kind.name());
                report.violations.push(format!("{}: {why}", kind.name()));
            }
            Err(why) => {
                eprintln!("chaos soak: {} skipped: {why}", kind.name());
                report.kinds.get_mut(&kind).unwrap().skipped = Some(why);
            }
            Ok((devices, healed, healed_ms)) => {
                let stats = report.kinds.get_mut(&kind).unwrap();
                stats.injected += 1;
                match rig.fresh_reading(&devices, from, healed_ms, healed).await {
                    Ok(d) => {
                        eprintln!(
                            "chaos soak: {:>6.1}s {} (held {:.1}s): recovered in {:.2}s",
                            started.elapsed().as_secs_f64(),
                            kind.name(),
                            (healed - t0).as_secs_f64(),
                            d.as_secs_f64()
                        );
                        stats.worst_recovery = Some(stats.worst_recovery.map_or(d, |w| w.max(d)));
                    }
                    Err(e) => {
                        stats.timed_out += 1;
                        eprintln!("chaos soak: VIOLATION {}: {e}", kind.name());
                        report.violations.push(format!("{}: {e}", kind.name()));
                    }
                }
            }
        }
        if !rig.agent.is_running() {
            report
                .violations
                .push(format!("the agent exited after {}", kind.name()));
            rig.agent.restart();
            rig.agent_started = Instant::now();
        }
        rig.sample_rss(settings.warm_up);
        done += 1;
    }

    settle(&mut rig, &settings, &mut report).await;
    if rig.disk.is_ok() {
        report.kinds.get_mut(&Kind::DiskFull).unwrap().noticed = Some(rig.disk_noticed);
    }
    let mut first_seen = std::collections::HashSet::new();
    for (i, m) in rig.watch.snapshot().iter().enumerate() {
        let Some(s) = parse(m) else { continue };
        if !first_seen.insert((s.boot, s.seq)) {
            let window = windows.partition_point(|(start, _)| *start <= i);
            if let Some((_, kind)) = window.checked_sub(1).map(|w| windows[w]) {
                report.kinds.get_mut(&kind).unwrap().duplicates += 1;
            }
        }
    }
    report.wall = started.elapsed();
    report
}

/// After the last fault: waits until the backlog has drained (every boot accounted for),
/// then checks the invariants.
async fn settle(rig: &mut Rig, settings: &Settings, report: &mut Report) {
    let deadline = Instant::now() + settings.drain_deadline;
    let killed: HashMap<u64, i64> = rig.kills.iter().copied().collect();
    let (mut dropped, mut gaps);
    // Replay of a killed boot's backlog comes interleaved with live readings, so its last
    // readings may still be on their way: wait (bounded) until the books balance.
    loop {
        dropped = buffer_dropped(&rig.agent).await;
        let messages = rig.watch.snapshot();
        gaps = interior_gaps(&messages);
        let tails_ok = kill_tails(&messages, &killed)
            .iter()
            .all(|(_, tail)| tail.is_some_and(|t| t <= tail_bound()));
        let balanced = gaps.values().sum::<u64>() == dropped.unwrap_or(u64::MAX);
        if (balanced && tails_ok) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    rig.sample_rss(settings.warm_up);
    let messages = rig.watch.snapshot();
    let seen: Vec<Seen> = messages.iter().filter_map(parse).collect();

    let missing: u64 = gaps.values().sum();
    match dropped {
        Some(d) => {
            report.dropped = d;
            if missing != d {
                report.violations.push(format!(
                    "readings missing inside their boot ({missing}, by boot {gaps:?}) != counted dropped ({d})"
                ));
            }
        }
        None => report
            .violations
            .push("`fieldlink buffer stats` printed no dropped count".into()),
    }
    let mut per_boot: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for s in &seen {
        per_boot.entry(s.boot).or_default().insert(s.seq);
    }
    report.boots = per_boot.len();
    report.produced = per_boot.values().map(|s| *s.last().unwrap_or(&0)).sum();
    report.delivered = per_boot.values().map(|s| s.len() as u64).sum();
    report.duplicates = seen.len() as u64 - report.delivered;

    // A SIGKILLed boot's unseen tail: its newest delivered reading precedes the kill by no
    // more than a commit interval (plus the spacing of readings).
    for (boot, tail) in kill_tails(&messages, &killed) {
        let Some(tail) = tail else {
            report.violations.push(format!(
                "boot {boot} was killed but none of its readings arrived"
            ));
            continue;
        };
        if tail > tail_bound() {
            report.violations.push(format!(
                "boot {boot}: its newest delivered reading was taken {} ms before the SIGKILL (bound {} ms)",
                tail.as_millis(),
                tail_bound().as_millis()
            ));
        }
        report.killed_boots.push(KilledBoot { boot, tail });
    }

    check_retained(rig, &seen, report).await;

    for d in rig.all_devices() {
        let topic = format!("{}/{d}/status", rig.prefix);
        if rig.watch.last_on(&topic).map(|m| m.payload) != Some("online".into()) {
            report
                .violations
                .push(format!("{topic} is not online at the end"));
        }
    }
    let stderr: Vec<String> = rig
        .agent
        .earlier_stderr()
        .iter()
        .cloned()
        .chain(rig.agent.stderr.snapshot())
        .collect();
    if let Some(p) = stderr.iter().find(|l| l.contains("panicked")) {
        report.violations.push(format!("agent panicked: {p}"));
    }
    for span in &rig.rss {
        if let Some(g) = span.growth_kib() {
            if g >= RSS_BUDGET_KIB {
                report.violations.push(format!(
                    "agent pid {} RSS grew {g} KiB ({:?} -> {:?} KiB over {:.0} s)",
                    span.pid,
                    span.start_kib,
                    span.end_kib,
                    span.lived.as_secs_f64()
                ));
            }
        }
    }
    report.rss = rig.rss.clone();
}

/// The longest a SIGKILL may precede by the newest delivered reading of the boot it ended.
fn tail_bound() -> Duration {
    COMMIT_INTERVAL + poll_interval() + TAIL_SLACK
}

/// Per killed boot: kill time minus the `ts` of its newest delivered reading (`None`: none
/// arrived).
fn kill_tails(messages: &[Message], killed: &HashMap<u64, i64>) -> Vec<(u64, Option<Duration>)> {
    let mut newest: HashMap<u64, i64> = HashMap::new();
    for s in messages.iter().filter_map(parse) {
        if killed.contains_key(&s.boot) {
            let e = newest.entry(s.boot).or_insert(s.ts_ms);
            *e = (*e).max(s.ts_ms);
        }
    }
    let mut tails: Vec<(u64, Option<Duration>)> = killed
        .iter()
        .map(|(&boot, &killed_ms)| {
            let tail = newest
                .get(&boot)
                .map(|&n| Duration::from_millis((killed_ms - n).max(0) as u64));
            (boot, tail)
        })
        .collect();
    tails.sort();
    tails
}

/// Per boot: seqs below the highest delivered one that never arrived.
fn interior_gaps(messages: &[Message]) -> BTreeMap<u64, u64> {
    let mut per_boot: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for s in messages.iter().filter_map(parse) {
        per_boot.entry(s.boot).or_default().insert(s.seq);
    }
    per_boot
        .into_iter()
        .map(|(b, seqs)| (b, seqs.last().copied().unwrap_or(0) - seqs.len() as u64))
        .filter(|(_, g)| *g > 0)
        .collect()
}

/// The buffer's dropped counter (all boots), from `fieldlink buffer stats`.
async fn buffer_dropped(agent: &Agent) -> Option<u64> {
    let out = agent.buffer_stats().await;
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("dropped:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// A late subscriber gets, on every reading topic, the newest reading delivered there.
async fn check_retained(rig: &Rig, seen: &[Seen], report: &mut Report) {
    let newest_before = newest_per_topic(seen);
    let late = Watch::start(rig.broker.port, &format!("{}/#", rig.prefix)).await;
    let got = poll_for(Duration::from_secs(10), || {
        let retained: HashMap<String, Seen> = late
            .snapshot()
            .iter()
            .filter(|m| m.retain)
            .filter_map(parse)
            .map(|s| (s.topic.clone(), s))
            .collect();
        newest_before
            .keys()
            .all(|t| retained.contains_key(t))
            .then_some(retained)
    })
    .await;
    let after: Vec<Seen> = rig.watch.snapshot().iter().filter_map(parse).collect();
    let newest_after = newest_per_topic(&after);
    let Some(retained) = got else {
        report.violations.push(
            "a late subscriber did not get a retained reading on every topic within 10 s".into(),
        );
        late.stop().await;
        return;
    };
    for (topic, before) in &newest_before {
        let r = &retained[topic];
        let after = &newest_after[topic];
        let key = (r.boot, r.seq);
        if key < *before || key > *after {
            report.violations.push(format!(
                "{topic}: retained (boot {}, seq {}) is not the newest delivered (between {before:?} and {after:?})",
                r.boot, r.seq
            ));
        }
    }
    late.stop().await;
}

fn newest_per_topic(seen: &[Seen]) -> HashMap<String, (u64, u64)> {
    let mut newest: HashMap<String, (u64, u64)> = HashMap::new();
    for s in seen {
        let e = newest.entry(s.topic.clone()).or_insert((s.boot, s.seq));
        *e = (*e).max((s.boot, s.seq));
    }
    newest
}

/// Polls `cond` every 20 ms until it returns `Some`, or gives `None` after `deadline`: for
/// checks that report a violation instead of panicking.
async fn poll_for<T>(deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
