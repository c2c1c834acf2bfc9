//! Issue 7 figures, printed and written as JSON (never asserted): footprint, throughput,
//! wire bytes per reading for each payload mode, idle cost, RTU bus time against the wire
//! bound, binary sizes, and hand-timed micro benches of the hot paths.
//!
//! Every whole-agent figure comes from the real release binary (`fieldlink run`, built by
//! `cargo bench` with the release profile) against a real mosquitto and in-process Modbus
//! simulators (TCP on loopback, RTU over a pty with wire timing), read from /proc.
//! Peer limits are measured in the same run so ratios survive a noisy machine.
//!
//! Run (needs mosquitto):
//!   cargo bench --no-default-features --bench agent              # full (about 9 min)
//!   cargo bench --no-default-features --bench agent -- --quick   # short windows (about 3 min)
//!   cargo bench --no-default-features --bench agent -- --only footprint,wire   # a subset
//! `--no-default-features` measures the binary as packaged (without the demo broker, which
//! adds about 4 MiB of code, much of it resident); without it the demo build is measured.
//! Scenarios for --only: micro, size, footprint, idle, wire, throughput, rtu.
//! Results: the table on stdout and `$CARGO_TARGET_DIR/bench/results.json` (else
//! `target/bench/results.json`). Cross-built binaries are sized when found under the target
//! dir or `FIELDLINK_CROSS_TARGET_DIR` (packaging/cross-build.sh puts them there).
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldlink::buffer::{Outbox, ReadingNumber};
use fieldlink::config::{
    DataType, Deadband, PayloadMode, Point, ReportByException, Table, WordOrder,
};
use fieldlink::model::{Reading, Value};
use fieldlink::poll::modbus::codec::decode_registers;
use fieldlink::poll::modbus::plan::{plan, plan_groups};
use fieldlink::sim::{self, SimDevice, WireTiming};
use fieldlink::uplink::report::ExceptionFilter;
use fieldlink::uplink::topic;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;
use support::proxy::Proxy;
use support::Broker;
use tokio::net::TcpListener;
use tokio_serial::SerialPort;

/// The agent's own in-flight window (src/uplink/mqtt.rs), given to the bare publisher too.
const INFLIGHT: u16 = 100;

/// Point names of a three-phase meter; devices with more points repeat them with a suffix.
const NAMES: [&str; 24] = [
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "power_l1",
    "power_l2",
    "power_l3",
    "apparent_l1",
    "apparent_l2",
    "apparent_l3",
    "reactive_l1",
    "reactive_l2",
    "reactive_l3",
    "pf_l1",
    "pf_l2",
    "pf_l3",
    "frequency",
    "power_total",
    "energy_import",
    "energy_export",
    "current_n",
    "thd_voltage",
];

fn point_name(i: usize) -> String {
    match i / NAMES.len() {
        0 => NAMES[i].to_string(),
        n => format!("{}_{n}", NAMES[i % NAMES.len()]),
    }
}

struct Args {
    quick: bool,
    only: Option<Vec<String>>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            quick: false,
            only: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--quick" => a.quick = true,
                "--only" => {
                    a.only = it
                        .next()
                        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
                }
                _ => {}
            }
        }
        a
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }

    /// Footprint window: 60 s as the issue asks, 15 s with --quick.
    fn footprint_window(&self) -> Duration {
        Duration::from_secs(if self.quick { 15 } else { 60 })
    }

    fn window(&self, quick: u64, full: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

struct Row {
    scenario: String,
    metric: String,
    value: f64,
    unit: &'static str,
    goal: Option<(&'static str, f64)>,
    note: String,
}

impl Row {
    fn met(&self) -> Option<bool> {
        self.goal.map(|(op, limit)| match op {
            "<=" => self.value <= limit,
            _ => self.value >= limit,
        })
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, scenario: &str, metric: &str, value: f64, unit: &'static str) -> &mut Row {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            unit,
            goal: None,
            note: String::new(),
        });
        let row = self.rows.last_mut().unwrap();
        println!("  {:<22} {:<42} {}", row.scenario, row.metric, fmt(value));
        row
    }

    fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "| {:<26} | {:<40} | {:>10} | {:<5} | {:<8} | {:<3} |\n",
            "scenario", "metric", "value", "unit", "goal", "met"
        ));
        out.push_str(&format!(
            "|{}|{}|{}|{}|{}|{}|\n",
            "-".repeat(28),
            "-".repeat(42),
            "-".repeat(12),
            "-".repeat(7),
            "-".repeat(10),
            "-".repeat(5)
        ));
        for r in &self.rows {
            let goal = r
                .goal
                .map(|(op, v)| format!("{op} {}", fmt(v)))
                .unwrap_or_default();
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            out.push_str(&format!(
                "| {:<26} | {:<40} | {:>10} | {:<5} | {:<8} | {:<3} |\n",
                r.scenario,
                r.metric,
                fmt(r.value),
                r.unit,
                goal,
                met
            ));
        }
        out
    }

    fn json(&self, args: &Args, started: Instant) -> serde_json::Value {
        json!({
            "machine": machine(),
            "mode": if args.quick { "quick" } else { "full" },
            "footprint_window_s": args.footprint_window().as_secs(),
            "duration_s": started.elapsed().as_secs(),
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "value": r.value,
                "unit": r.unit,
                "goal": r.goal.map(|(op, v)| format!("{op} {v}")),
                "met": r.met(),
                "note": r.note,
            })).collect::<Vec<_>>(),
        })
    }
}

fn fmt(v: f64) -> String {
    if v == 0.0 || v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let mosquitto = Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(String::from)
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_mib": mem_kb / 1024,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "arch": std::env::consts::ARCH,
        "mosquitto": mosquitto,
    })
}

// ---------------------------------------------------------------------------------------
// /proc readings of the agent process

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// CPU time of every thread, in seconds: the scheduler's nanosecond run time
/// (/proc/PID/task/*/schedstat), since utime + stime count 10 ms ticks, too coarse for a
/// process that runs a few milliseconds a second.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        })
        .sum();
    ns as f64 / 1e9
}

/// utime + stime of the process (all threads, 10 ms ticks), to cross-check [`cpu_seconds`].
fn cpu_ticks_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Voluntary context switches summed over the process' threads (each is one sleep/wake).
fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn threads(pid: u32) -> u64 {
    status_kb(pid, "Threads")
}

// ---------------------------------------------------------------------------------------
// The agent under test

struct AgentProc {
    child: Child,
    dir: tempfile::TempDir,
}

impl AgentProc {
    fn start(config: &str, dir: tempfile::TempDir) -> AgentProc {
        let path = dir.path().join("fieldlink.toml");
        std::fs::write(&path, config).unwrap();
        if let Err(e) = fieldlink::config::load(&path) {
            panic!("bench config does not load:\n{e}\n{config}");
        }
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        // FIELDLINK_BENCH_AGENT: another build of the agent (e.g. one with symbols, to profile).
        let binary = std::env::var_os("FIELDLINK_BENCH_AGENT")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_fieldlink").into());
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("MALLOC_ARENA_MAX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the fieldlink binary");
        println!("  (agent pid {})", child.id());
        AgentProc { child, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait: the agent's own clean shutdown.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mqtt_section(port: u16, prefix: &str, extra: &str) -> String {
    format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nprefix = \"{prefix}\"\n{extra}\n")
}

/// `FIELDLINK_BENCH_BUFFER` adds keys to every agent's `[buffer]` (e.g.
/// "spill_threshold = 100000"), to see what a buffer setting costs.
fn head(dir: &Path, mqtt: &str) -> String {
    head_with(dir, mqtt, "")
}

/// [`head`] with `[buffer]` keys of the scenario's own.
fn head_with(dir: &Path, mqtt: &str, buffer: &str) -> String {
    let extra = std::env::var("FIELDLINK_BENCH_BUFFER").unwrap_or_default();
    format!(
        "[gateway]\nid = \"bench\"\n\n{mqtt}\n[buffer]\npath = \"{}\"\n{buffer}\n{extra}\n\n[log]\nlevel = \"warn\"\n\n",
        dir.display()
    )
}

fn f32_points(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "[[device.point]]\nname = \"{}\"\naddress = \"{}\"\ntype = \"f32\"\nunit = \"V\"\n\n",
            point_name(i),
            40001 + 2 * i
        ));
    }
    out
}

/// A meter whose `points` f32 values drift slowly (amplitude 5, period 10 min, one phase per
/// point): realistic decimals, and a signal a deadband can suppress.
fn drifting_meter(unit: u8, points: usize) -> Arc<SimDevice> {
    let dev = SimDevice::new(unit);
    let value = move |i: usize, t: f64| -> f32 {
        let base = 100.0 + 10.0 * i as f64 + 0.123;
        (base + 5.0 * (std::f64::consts::TAU * t / 600.0 + i as f64).sin()) as f32
    };
    dev.with_banks(|b| {
        for i in 0..points {
            b.set_holding(
                2 * i as u16,
                &sim::to_words(&value(i, 0.0).to_be_bytes(), WordOrder::Abcd),
            );
        }
    });
    dev.set_dynamics(move |b, elapsed| {
        let t = elapsed.as_secs_f64();
        for i in 0..points {
            b.set_holding(
                2 * i as u16,
                &sim::to_words(&value(i, t).to_be_bytes(), WordOrder::Abcd),
            );
        }
    });
    dev
}

/// Modbus TCP simulators: `buses` listeners, each a gateway with `per_bus` meters (units
/// 1..). Returns the config's bus and device sections and the sim devices.
async fn tcp_fleet(
    buses: usize,
    per_bus: usize,
    points: usize,
    interval: &str,
) -> (
    String,
    Vec<Arc<SimDevice>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let mut text = String::new();
    let mut devices = Vec::new();
    let mut servers = Vec::new();
    for b in 0..buses {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let bus_devices: Vec<_> = (1..=per_bus as u8)
            .map(|u| drifting_meter(u, points))
            .collect();
        servers.push(sim::serve_tcp(listener, bus_devices.clone()));
        devices.extend(bus_devices);
        text.push_str(&format!(
            "[[bus]]\nname = \"gw{b}\"\ntype = \"modbus_tcp\"\naddress = \"127.0.0.1:{port}\"\n\n"
        ));
        for u in 1..=per_bus {
            text.push_str(&format!(
                "[[device]]\nname = \"m{b}_{u}\"\nbus = \"gw{b}\"\nunit = {u}\ninterval = \"{interval}\"\n\n{}",
                f32_points(points)
            ));
        }
    }
    (text, devices, servers)
}

fn requests(devices: &[Arc<SimDevice>]) -> u64 {
    devices.iter().map(|d| d.requests()).sum()
}

/// Readings per device request, from the agent's own planner (checked, not assumed).
fn points_per_request(config: &str) -> f64 {
    let cfg = fieldlink::config::load_str(Path::new("bench.toml"), config).unwrap();
    let dev = &cfg.devices[0];
    let reqs: usize = plan_groups(dev).iter().map(|g| g.requests.len()).sum();
    dev.modbus().map_or(0, |m| m.points.len()) as f64 / reqs as f64
}

async fn wait_for_requests(devices: &[Arc<SimDevice>], what: &str) {
    support::wait_until(what, Duration::from_secs(30), || {
        (requests(devices) > devices.len() as u64).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// `variant`: a label and the `[mqtt]` / `[buffer]` keys it adds to the default config.
async fn footprint(
    report: &mut Report,
    args: &Args,
    devices: usize,
    points: usize,
    variant: Option<(&str, &str, &str)>,
) {
    let (label, mqtt_extra, buffer_extra) = variant.unwrap_or(("", "", ""));
    let scenario = format!("footprint {devices}x{points}@1s{label}");
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let per_bus = devices.min(5);
    let (fleet, sims, _servers) = tcp_fleet(devices / per_bus, per_bus, points, "1s").await;
    let config = head_with(
        dir.path(),
        &mqtt_section(broker.port, "bench/fp", mqtt_extra),
        buffer_extra,
    ) + &fleet;
    let per_request = points_per_request(&config);
    let agent = AgentProc::start(&config, dir);
    let pid = agent.pid();
    wait_for_requests(&sims, "the agent polling").await;
    tokio::time::sleep(Duration::from_secs(if args.quick { 3 } else { 10 })).await;

    let window = args.footprint_window();
    let (r0, c0, k0, w0, t0) = (
        requests(&sims),
        cpu_seconds(pid),
        cpu_ticks_seconds(pid),
        voluntary_switches(pid),
        Instant::now(),
    );
    let (mut rss_max, mut anon_max) = (0, 0);
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_max = rss_max.max(status_kb(pid, "VmRSS"));
        anon_max = anon_max.max(status_kb(pid, "RssAnon"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let readings = (requests(&sims) - r0) as f64 * per_request;
    let cpu = cpu_seconds(pid) - c0;
    let cpu_ticks = cpu_ticks_seconds(pid) - k0;
    let wakeups = (voluntary_switches(pid) - w0) as f64 / elapsed;
    let hwm = status_kb(pid, "VmHWM");
    let n_threads = threads(pid);
    let tail = agent.log_tail();
    agent.stop();

    let goals = devices == 5 && variant.is_none();
    let row = report.add(
        &scenario,
        "RSS steady (max VmRSS in window)",
        rss_max as f64 / 1024.0,
        "MiB",
    );
    if goals {
        row.goal = Some(("<=", 8.0));
    }
    let row = report.add(&scenario, "RSS peak (VmHWM)", hwm as f64 / 1024.0, "MiB");
    row.note = "file-backed code pages are most of it: see the RssAnon row".into();
    if goals {
        row.goal = Some(("<=", 8.0));
    }
    report.add(
        &scenario,
        "private memory (max RssAnon in window)",
        anon_max as f64 / 1024.0,
        "MiB",
    );
    let row = report.add(
        &scenario,
        "CPU per 100k readings",
        cpu / readings.max(1.0) * 100_000.0,
        "s",
    );
    row.goal = Some(("<=", 1.0));
    row.note = format!(
        "scheduler run time; utime+stime ticks say {:.2}",
        cpu_ticks / readings.max(1.0) * 100_000.0
    );
    report.add(
        &scenario,
        "readings/s polled and published",
        readings / elapsed,
        "1/s",
    );
    let row = report.add(
        &scenario,
        "wake-ups/s (voluntary ctx switches)",
        wakeups,
        "1/s",
    );
    row.note = format!("{n_threads} threads");
    let row = report.add(&scenario, "threads", n_threads as f64, "");
    row.note = format!("window {:.0}s; agent log tail: {tail}", elapsed);
}

async fn idle(report: &mut Report, args: &Args) {
    let scenario = "idle (no devices)";
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let config = head(
        dir.path(),
        &mqtt_section(proxy.port, "bench/idle", "keep_alive = \"15s\""),
    );
    let agent = AgentProc::start(&config, dir);
    let pid = agent.pid();
    support::wait_until("the agent connected", Duration::from_secs(30), || {
        (proxy.bytes_down() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = args.window(30, 120);
    let (b0, w0, c0, t0) = (
        proxy.bytes_up() + proxy.bytes_down(),
        voluntary_switches(pid),
        cpu_seconds(pid),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let bytes = (proxy.bytes_up() + proxy.bytes_down() - b0) as f64;
    let wakeups = (voluntary_switches(pid) - w0) as f64 / elapsed;
    let cpu = cpu_seconds(pid) - c0;
    let rss = status_kb(pid, "VmRSS");
    agent.stop();
    let row = report.add(
        scenario,
        "bytes/hour on the wire (both ways)",
        bytes * 3600.0 / elapsed,
        "B/h",
    );
    row.note = format!("keep_alive 15s, health every 60s; window {elapsed:.0}s");
    report.add(scenario, "wake-ups/s", wakeups, "1/s");
    report.add(scenario, "CPU seconds/hour", cpu * 3600.0 / elapsed, "s/h");
    report.add(scenario, "RSS", rss as f64 / 1024.0, "MiB");
}

async fn wire_bytes(report: &mut Report, args: &Args) {
    let modes: [(&str, &str); 5] = [
        ("json", "payload = \"json\""),
        ("plain", "payload = \"plain\""),
        ("device", "payload = \"device\""),
        (
            "device+deadband 0.5",
            "payload = \"device\"\ndeadband = 0.5",
        ),
        ("json+deadband 0.5", "payload = \"json\"\ndeadband = 0.5"),
    ];
    let broker = Broker::start();
    for (name, extra) in modes {
        let scenario = format!("wire {name}");
        let proxy = Proxy::start(broker.port).await;
        let dir = tempfile::tempdir().unwrap();
        let (fleet, sims, _servers) = tcp_fleet(1, 5, 24, "1s").await;
        let config = head(dir.path(), &mqtt_section(proxy.port, "fl/gw-0001", extra)) + &fleet;
        let per_request = points_per_request(&config);
        let agent = AgentProc::start(&config, dir);
        wait_for_requests(&sims, "the agent polling").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let window = args.window(15, 60);
        let (r0, u0, d0, t0) = (
            requests(&sims),
            proxy.bytes_up(),
            proxy.bytes_down(),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let readings = (requests(&sims) - r0) as f64 * per_request;
        let up = (proxy.bytes_up() - u0) as f64;
        let down = (proxy.bytes_down() - d0) as f64;
        let elapsed = t0.elapsed().as_secs_f64();
        agent.stop();
        let row = report.add(
            &scenario,
            "bytes to broker per reading (5x24@1s)",
            up / readings.max(1.0),
            "B",
        );
        if name.starts_with("device") {
            row.goal = Some(("<=", 12.0));
        }
        row.note = format!("window {elapsed:.0}s, {readings:.0} readings; prefix fl/gw-0001, 10-13 char point names");
        report.add(
            &scenario,
            "bytes from broker per reading (acks)",
            down / readings.max(1.0),
            "B",
        );
    }
}

/// `variant`: a label and `[buffer]` keys (the default spills to disk past 1000 queued).
async fn throughput(report: &mut Report, args: &Args, variant: Option<(&str, &str)>) {
    let scenario = match variant {
        Some((label, _)) => format!("throughput QoS1 {label}"),
        None => "throughput QoS1".to_string(),
    };
    let scenario = scenario.as_str();
    let broker = Broker::start();
    let window = args.window(8, 20);

    // The agent: 4 TCP gateways x 5 meters x 60 points polled as fast as they answer.
    let proxy = Proxy::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let (fleet, sims, _servers) = tcp_fleet(4, 5, 60, "10ms").await;
    let config = head_with(
        dir.path(),
        &mqtt_section(proxy.port, "bench/tp", "queue_capacity = 200000"),
        variant.map_or("", |v| v.1),
    ) + &fleet;
    let per_request = points_per_request(&config);
    let agent = AgentProc::start(&config, dir);
    let pid = agent.pid();
    wait_for_requests(&sims, "the agent polling").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (r0, d0, c0, t0) = (
        requests(&sims),
        proxy.bytes_down(),
        cpu_seconds(pid),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    // Every PUBACK is 4 bytes; nothing else flows down while publishing (no pings).
    let agent_rate = (proxy.bytes_down() - d0) as f64 / 4.0 / elapsed;
    let polled = (requests(&sims) - r0) as f64 * per_request / elapsed;
    let agent_cpu = (cpu_seconds(pid) - c0) / elapsed;
    let rss = status_kb(pid, "VmHWM");
    agent.stop();
    drop(proxy);

    // The bare publisher: rumqttc alone, same broker, proxy, in-flight window, topics and
    // payload sizes, retained, QoS 1, publishing as fast as it is acknowledged.
    let proxy = Proxy::start(broker.port).await;
    let bare_rate = bare_publisher(&proxy, window).await;

    report
        .add(scenario, "agent readings/s acknowledged", agent_rate, "1/s")
        .note = format!(
        "polled {polled:.0}/s, agent CPU {:.0}%, VmHWM {:.1} MiB",
        agent_cpu * 100.0,
        rss as f64 / 1024.0
    );
    report.add(
        scenario,
        "bare rumqttc publishes/s acknowledged",
        bare_rate,
        "1/s",
    );
    report
        .add(
            scenario,
            "ratio agent / bare",
            agent_rate / bare_rate.max(1.0),
            "",
        )
        .goal = Some((">=", 0.8));
}

async fn bare_publisher(proxy: &Proxy, window: Duration) -> f64 {
    let mut opts = MqttOptions::new("bench-bare", "127.0.0.1", proxy.port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_inflight(INFLIGHT);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let publisher = tokio::spawn(async move {
        let topics: Vec<String> = (0..20 * 60)
            .map(|i| {
                format!(
                    "bench/bare/m{}_{}/{}",
                    i / 300,
                    (i / 60) % 5 + 1,
                    point_name(i % 60)
                )
            })
            .collect();
        let mut seq = 0u64;
        loop {
            seq += 1;
            let topic = &topics[seq as usize % topics.len()];
            let payload = format!(
                "{{\"value\":{},\"unit\":\"V\",\"ts\":1764000000000,\"seq\":{seq}}}",
                104.56789 + (seq % 100) as f64
            );
            if client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    support::wait_until(
        "the bare publisher acknowledged",
        Duration::from_secs(30),
        || (proxy.bytes_down() > 1000).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (d0, t0) = (proxy.bytes_down(), Instant::now());
    tokio::time::sleep(window).await;
    let rate = (proxy.bytes_down() - d0) as f64 / 4.0 / t0.elapsed().as_secs_f64();
    publisher.abort();
    pump.abort();
    rate
}

/// `at_wire_minimum`: the bus keeps only t3.5 between exchanges (`inter_request_delay` set
/// to it) instead of the default 20 ms that slow devices need; the difference is silence the
/// user chose, the rest is what the agent costs.
async fn rtu(report: &mut Report, args: &Args, baud: u32, at_wire_minimum: bool) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("pty path");
    let timing = WireTiming {
        baud,
        bits_per_char: 11,
        turnaround: Duration::from_millis(5),
    };
    let (scenario, delay) = if at_wire_minimum {
        let micros = timing.frame_gap().as_nanos().div_ceil(1000);
        (
            format!("RTU {baud} 8E1, delay t3.5"),
            format!("inter_request_delay = \"{micros}us\"\n"),
        )
    } else {
        (format!("RTU {baud} 8E1, default"), String::new())
    };
    let meter = drifting_meter(1, 24);
    meter.with_banks(|b| b.set_input(0, &[1, 2, 3, 4]));
    let _server = sim::serve_rtu_timed(master, vec![meter.clone()], timing);
    let mut config = head(dir.path(), &mqtt_section(broker.port, "bench/rtu", ""));
    config.push_str(&format!(
        "[[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"{path}\"\nbaud = {baud}\nparity = \"even\"\nresponse_timeout = \"1s\"\n{delay}\n\
         [[device]]\nname = \"meter\"\nbus = \"rs485\"\nunit = 1\ninterval = \"10ms\"\n\n{}\
         [[device.point]]\nname = \"state\"\naddress = \"30001\"\ntype = \"u16\"\n\n\
         [[device.point]]\nname = \"alarms\"\naddress = \"30002\"\ntype = \"u32\"\n\n",
        f32_points(24),
    ));
    // The wire-time lower bound of one cycle, from the frames the agent plans.
    let cfg = fieldlink::config::load_str(Path::new("bench.toml"), &config).unwrap();
    let groups = plan_groups(&cfg.devices[0]);
    let mut bound = Duration::ZERO;
    let mut per_cycle = 0u64;
    for g in &groups {
        for r in &g.requests {
            let answer = if r.table.is_bits() {
                5 + (r.count as usize).div_ceil(8)
            } else {
                5 + 2 * r.count as usize
            };
            // The exchange, and the 3.5-character silence before the next request.
            bound += timing.exchange(8, answer) + timing.frame_gap();
            per_cycle += 1;
        }
    }
    let agent = AgentProc::start(&config, dir);
    let pid = agent.pid();
    wait_for_requests(
        std::slice::from_ref(&meter),
        "the agent polling the RTU line",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = args.window(10, 30);
    let (r0, c0, t0) = (meter.requests(), cpu_seconds(pid), Instant::now());
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed();
    let cycles = (meter.requests() - r0) as f64 / per_cycle as f64;
    let cpu = cpu_seconds(pid) - c0;
    agent.stop();
    drop(slave);
    let cycle = elapsed.as_secs_f64() / cycles.max(1.0);
    report
        .add(
            &scenario,
            "poll cycle (24 f32 + 2 input regs)",
            cycle * 1000.0,
            "ms",
        )
        .note = format!(
        "{per_cycle} requests a cycle, turnaround 5 ms, window {:.0}s",
        elapsed.as_secs_f64()
    );
    report.add(
        &scenario,
        "wire-time lower bound",
        bound.as_secs_f64() * 1000.0,
        "ms",
    );
    let row = report.add(
        &scenario,
        "ratio cycle / bound",
        cycle / bound.as_secs_f64(),
        "",
    );
    if baud == 9600 && at_wire_minimum {
        row.goal = Some(("<=", 1.2));
    }
    report.add(
        &scenario,
        "agent CPU while the line is busy",
        cpu / elapsed.as_secs_f64() * 100.0,
        "%",
    );
}

fn sizes(report: &mut Report) {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_fieldlink"));
    if let Ok(m) = std::fs::metadata(&own) {
        report
            .add(
                "binary size",
                if cfg!(feature = "demo") {
                    "x86_64 (this build, with the demo broker)"
                } else {
                    "x86_64 (this build, as packaged: no demo)"
                },
                m.len() as f64 / 1_048_576.0,
                "MiB",
            )
            .note = own.display().to_string();
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("FIELDLINK_CROSS_TARGET_DIR") {
        roots.push(d.into());
    }
    if let Some(d) = own.parent().and_then(|p| p.parent()) {
        roots.push(d.to_path_buf());
    }
    for (triple, label) in [
        ("x86_64-unknown-linux-gnu", "x86_64 (packaged, no demo)"),
        ("aarch64-unknown-linux-gnu", "aarch64 (packaged, no demo)"),
        ("armv7-unknown-linux-gnueabihf", "armv7 (packaged, no demo)"),
    ] {
        let found = roots
            .iter()
            .map(|r| r.join(triple).join("release/fieldlink"))
            .find(|p| p.exists());
        match found.and_then(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len()))) {
            Some((p, len)) => {
                let row = report.add("binary size", label, len as f64 / 1_048_576.0, "MiB");
                row.note = p.display().to_string();
                if triple.starts_with("aarch64") {
                    row.goal = Some(("<=", 8.0));
                }
            }
            None => println!("  (no {triple} binary found: run packaging/cross-build.sh, or set FIELDLINK_CROSS_TARGET_DIR)"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hand-timed micro benches (criterion would add ~30 crates to a tree built on Pi-class CI)

fn time_ns(iterations: u64, mut f: impl FnMut(u64)) -> f64 {
    for i in 0..iterations / 10 {
        f(i);
    }
    let t = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / iterations as f64
}

fn micro(report: &mut Report) {
    let point = |i: usize| Point {
        name: point_name(i),
        table: Table::Holding,
        address: 2 * i as u16,
        data_type: DataType::F32,
        order: WordOrder::Abcd,
        scale: 1.0,
        offset: 0.0,
        unit: Some("V".into()),
        interval: None,
        write: None,
    };
    let points: Vec<Point> = (0..40).map(point).collect();
    let words = sim::to_words(&230.123f32.to_be_bytes(), WordOrder::Abcd);
    report.add(
        "micro",
        "decode f32 point",
        time_ns(2_000_000, |_| {
            black_box(decode_registers(black_box(&points[0]), black_box(&words)).ok());
        }),
        "ns/op",
    );
    report.add(
        "micro",
        "plan 40 points",
        time_ns(200_000, |_| {
            black_box(plan(black_box(&points), 10));
        }),
        "ns/op",
    );
    let reading = Reading {
        device: Arc::from("m0_1"),
        point: Arc::from("voltage_l1"),
        value: Ok(Value::Float(230.123)),
        unit: Some(Arc::from("V")),
        ts_ms: 1_764_000_000_000,
    };
    report.add(
        "micro",
        "encode json reading (topic + payload)",
        time_ns(1_000_000, |i| {
            black_box(topic::reading_topic(
                "fl/gw-0001",
                &reading.device,
                &reading.point,
            ));
            black_box(topic::reading_payload(
                PayloadMode::Json,
                black_box(&reading),
                ReadingNumber { boot: 1, seq: i },
            ));
        }),
        "ns/op",
    );
    let values: Vec<(String, Result<Value, fieldlink::model::Quality>)> = (0..24)
        .map(|i| (point_name(i), Ok(Value::Float(100.0 + i as f64 * 1.37))))
        .collect();
    report.add(
        "micro",
        "encode device payload, 24 points",
        time_ns(200_000, |i| {
            black_box(topic::device_payload(
                1_764_000_000_000,
                ReadingNumber { boot: 1, seq: i },
                values.iter().map(|(n, v)| (n.as_str(), v)),
            ));
        }),
        "ns/op",
    );
    let outbox = Outbox::new(1_000_000, 1);
    report.add(
        "micro",
        "outbox push + take + ack (memory)",
        time_ns(1_000_000, |i| {
            outbox.push_reading(format!("fl/gw/m/p{}", i % 100), 0, |n| {
                n.seq.to_le_bytes().to_vec()
            });
            for r in outbox.take(1) {
                outbox.ack(r.seq);
            }
        }),
        "ns/op",
    );
    let mut filter = ExceptionFilter::new(ReportByException {
        deadband: Deadband::Absolute(0.5),
        max_interval: Duration::from_secs(300),
    });
    let readings: Vec<Reading> = (0..24)
        .map(|i| Reading {
            point: Arc::from(point_name(i).as_str()),
            ..reading.clone()
        })
        .collect();
    report.add(
        "micro",
        "deadband filter admit",
        time_ns(2_000_000, |i| {
            black_box(filter.admit(black_box(&readings[i as usize % 24])));
        }),
        "ns/op",
    );
}

fn main() {
    // `cargo test` runs bench targets without --bench only when asked; measure only here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args = Args::parse();
    let started = Instant::now();
    let mut report = Report::default();
    println!(
        "fieldlink bench ({}, footprint window {} s, agent binary {} the demo feature)",
        if args.quick { "--quick" } else { "full" },
        args.footprint_window().as_secs(),
        if cfg!(feature = "demo") {
            "with"
        } else {
            "without"
        },
    );
    if cfg!(feature = "demo") {
        println!("  note: packaged builds use --no-default-features; run `cargo bench --no-default-features --bench agent` to measure those");
    }
    if args.wants("micro") {
        micro(&mut report);
    }
    if args.wants("size") {
        sizes(&mut report);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if args.wants("footprint") {
            footprint(&mut report, &args, 5, 24, None).await;
            footprint(
                &mut report,
                &args,
                5,
                24,
                Some((" device", "payload = \"device\"", "")),
            )
            .await;
            footprint(&mut report, &args, 50, 40, None).await;
            let spill = (" spill 20k", "", "spill_threshold = 20000");
            footprint(&mut report, &args, 50, 40, Some(spill)).await;
        }
        if args.wants("idle") {
            idle(&mut report, &args).await;
        }
        if args.wants("wire") {
            wire_bytes(&mut report, &args).await;
        }
        if args.wants("throughput") {
            throughput(&mut report, &args, None).await;
            throughput(
                &mut report,
                &args,
                Some(("spill 100k", "spill_threshold = 100000")),
            )
            .await;
        }
        if args.wants("rtu") {
            for baud in [9600, 19200] {
                rtu(&mut report, &args, baud, false).await;
                rtu(&mut report, &args, baud, true).await;
            }
        }
    });
    let table = report.table();
    println!("\n{table}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target.join("bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("results.json");
    let body = serde_json::to_vec_pretty(&report.json(&args, started)).unwrap();
    std::fs::write(&path, body).unwrap();
    std::fs::write(out.join("results.md"), &table).unwrap();
    println!("written: {} (and results.md)", path.display());
}
