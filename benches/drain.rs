//! Issue 4 figures for the whole agent (printed, never asserted):
//! - bytes written to disk per reading (`write_bytes` of the agent's /proc/PID/io) in both
//!   durability modes, link up and link down, while it polls Modbus devices;
//! - how fast a 100 000-reading backlog (a `buffer.db` filled beforehand) drains into
//!   mosquitto, next to a bare rumqttc QoS 1 publisher against the same broker in the same
//!   run (the ratio is the figure), both timed by one subscriber counting arrivals;
//! - the agent's peak RSS (VmHWM) during that drain.
//!
//! Needs mosquitto. Run: `cargo bench --bench drain` (release agent), options
//! `-- --secs 10 --backlog 100000`. The state directories live under the system temp dir
//! (or FIELDLINK_BENCH_DIR), which must not be a tmpfs for `write_bytes` to mean anything.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldlink::buffer::store::{protecting, Limits, Store};
use fieldlink::buffer::Record;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::agent::{self, Agent, ConfigDir};
use support::modbus::{self, Bank, SimDevice};
use support::{unique, wait_until, Broker};

const DEVICES: u8 = 5;
const POINTS: u16 = 20;
const DEADLINE: Duration = Duration::from_secs(600);

struct Args {
    window: Duration,
    backlog: u64,
}

fn args() -> Args {
    let mut a = Args {
        window: Duration::from_secs(10),
        backlog: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--secs" => {
                if let Some(s) = it.next().and_then(|s| s.parse().ok()) {
                    a.window = Duration::from_secs(s);
                }
            }
            "--backlog" => a.backlog = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.backlog),
            _ => {} // cargo passes --bench
        }
    }
    a
}

fn proc_field(pid: i32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn write_bytes(pid: i32) -> u64 {
    proc_field(pid, "io", "write_bytes:")
}

fn vm_kib(pid: i32, key: &str) -> u64 {
    proc_field(pid, "status", key)
}

/// A config in a state directory of its own (under FIELDLINK_BENCH_DIR when set).
fn config_dir(toml: &str) -> ConfigDir {
    let dir = match std::env::var_os("FIELDLINK_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let path = dir.path().join("fieldlink.toml");
    std::fs::write(&path, toml).unwrap();
    ConfigDir { dir, path }
}

fn polling_config(mqtt_port: u16, prefix: &str, sim: &str, durability: &str) -> String {
    let mut s = agent::head(mqtt_port, prefix);
    s += "backoff_initial = \"1s\"\nbackoff_max = \"2s\"\n";
    s += &format!("\n[buffer]\ndurability = \"{durability}\"\n");
    s += &format!("\n[[bus]]\nname = \"plant\"\ntype = \"modbus_tcp\"\naddress = \"{sim}\"\n");
    for unit in 1..=DEVICES {
        s += &format!(
            "\n[[device]]\nname = \"d{unit}\"\nbus = \"plant\"\nunit = {unit}\ninterval = \"100ms\"\n"
        );
        for i in 0..POINTS {
            s += &format!(
                "\n[[device.point]]\nname = \"p{i}\"\ntable = \"holding\"\naddress = {i}\ntype = \"u16\"\n"
            );
        }
    }
    s
}

/// Bytes the agent wrote to disk per reading over `window`, polling 5 devices x 20 points
/// at 10 Hz (1000 readings/s), with the broker at `mqtt_port` (up) or nothing there (down).
async fn bytes_per_reading(mqtt_port: u16, durability: &str, window: Duration) -> (u64, u64) {
    let devices: Vec<SimDevice> = (1..=DEVICES)
        .map(|unit| {
            let d = SimDevice::new(unit);
            d.set_registers(Bank::Holding, 0, &(0..POINTS).collect::<Vec<_>>());
            d
        })
        .collect();
    let sim = modbus::serve_tcp(&devices.iter().collect::<Vec<_>>()).await;
    let prefix = unique("bench/io");
    let toml = polling_config(mqtt_port, &prefix, &sim.address(), durability);
    let mut agent = Agent::start_with(config_dir(&toml), &[]);
    // Warm: every device answering, the store open and its first writes behind it.
    wait_until("devices polled", Duration::from_secs(30), || {
        devices.iter().all(|d| d.requests() > 20).then_some(())
    })
    .await;
    let requests = || devices.iter().map(|d| d.requests()).sum::<u64>();
    let (bytes0, requests0) = (write_bytes(agent.pid()), requests());
    tokio::time::sleep(window).await;
    let (bytes1, requests1) = (write_bytes(agent.pid()), requests());
    agent.sigterm();
    agent.wait_exit(Duration::from_secs(10)).await;
    let readings = (requests1 - requests0) * u64::from(POINTS);
    (bytes1 - bytes0, readings)
}

fn topic(prefix: &str, i: u64) -> String {
    format!(
        "{prefix}/d{}/p{}",
        i % u64::from(DEVICES),
        i % u64::from(POINTS)
    )
}

fn payload(i: u64, ts: u64) -> Vec<u8> {
    format!("{{\"value\":{},\"ts\":{ts},\"seq\":{i}}}", i % 65_536).into_bytes()
}

/// A subscriber that only counts, and notes when the first and the latest message came.
struct Counter {
    count: Arc<AtomicU64>,
    first_last: Arc<Mutex<(Option<Instant>, Option<Instant>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn start(port: u16, filter: &str) -> Counter {
        let mut opts = MqttOptions::new(unique("count"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let first_last = Arc::new(Mutex::new((None, None)));
        let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
        let (c, fl) = (count.clone(), first_last.clone());
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subacked = Some(subacked_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subacked.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        let now = Instant::now();
                        let mut fl = fl.lock().unwrap();
                        fl.0.get_or_insert(now);
                        fl.1 = Some(now);
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked_rx)
            .await
            .expect("SUBACK within 10 s")
            .unwrap();
        Counter {
            count,
            first_last,
            task,
        }
    }

    async fn wait_for(&self, n: u64) {
        wait_until(&format!("{n} messages counted"), DEADLINE, || {
            (self.count.load(Ordering::Relaxed) >= n).then_some(())
        })
        .await;
    }

    /// First to latest arrival.
    fn span(&self) -> Duration {
        match *self.first_last.lock().unwrap() {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bare rumqttc QoS 1 publisher sending `n` readings as fast as its in-flight window
/// (512, the agent's send window) allows; returns the time from the first publish to the
/// last PUBACK.
async fn bare_publisher(port: u16, prefix: &str, n: u64) -> Duration {
    let mut opts = MqttOptions::new(unique("bare"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_inflight(512);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let prefix = prefix.to_string();
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        let ts = fieldlink::model::unix_ms_now();
        for i in 0..n {
            client
                .publish(topic(&prefix, i), QoS::AtLeastOnce, false, payload(i, ts))
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let took = start.elapsed();
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
    took
}

/// Fills `dir/buffer.db` with `n` readings, as an agent would have after a long outage.
fn fill_buffer(dir: &Path, prefix: &str, n: u64) {
    let (mut store, _) = Store::open(dir, Limits::default()).unwrap();
    let ts = fieldlink::model::unix_ms_now();
    let none = HashSet::new();
    let mut seq = 1;
    while seq <= n {
        let batch: Vec<Record> = (seq..(seq + 5000).min(n + 1))
            .map(|i| Record {
                seq: i,
                topic: topic(prefix, i).into(),
                payload: payload(i, ts).into(),
                ts_ms: ts,
                queued_at: fieldlink::buffer::clock::Queued::UNKNOWN,
            })
            .collect();
        seq += batch.len() as u64;
        store.append(&batch, &none, &mut protecting(&none)).unwrap();
    }
}

struct Drain {
    span: Duration,
    from_start: Duration,
    hwm_kib: u64,
    rss_after_kib: u64,
}

/// The agent started on a state directory holding `n` readings, link up: how long until a
/// subscriber has them all, and the agent's peak RSS meanwhile.
async fn agent_drain(broker: &Broker, n: u64) -> Drain {
    let prefix = unique("bench/drain");
    let config = config_dir(&agent::head(broker.port, &prefix));
    fill_buffer(config.dir.path(), &prefix, n);
    let counter = Counter::start(broker.port, &format!("{prefix}/+/+")).await;
    let start = Instant::now();
    let mut agent = Agent::start_with(config, &[]);
    counter.wait_for(n).await;
    let from_start = start.elapsed();
    let hwm_kib = vm_kib(agent.pid(), "VmHWM:");
    let rss_after_kib = vm_kib(agent.pid(), "VmRSS:");
    agent.sigterm();
    agent.wait_exit(Duration::from_secs(10)).await;
    Drain {
        span: counter.span(),
        from_start,
        hwm_kib,
        rss_after_kib,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs bench binaries too: only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("drain: run it with `cargo bench --bench drain`");
        return;
    }
    let a = args();
    if std::env::var_os("RUST_LOG").is_none() {
        // Logging at debug costs the agent time the figures should not include.
        std::env::set_var("RUST_LOG", "warn");
    }
    let broker = Broker::start();

    println!(
        "bytes written to disk per reading (agent /proc/PID/io write_bytes; {DEVICES} devices x \
         {POINTS} points at 10 Hz for {:?})",
        a.window
    );
    println!(
        "{:>10} | {:>5} | {:>9} | {:>12} | {:>13}",
        "durability", "link", "readings", "write_bytes", "bytes/reading"
    );
    let nobody = support::free_port();
    for durability in ["outage", "always"] {
        for (link, port) in [("up", broker.port), ("down", nobody)] {
            let (bytes, readings) = bytes_per_reading(port, durability, a.window).await;
            println!(
                "{:>10} | {:>5} | {:>9} | {:>12} | {:>13.1}",
                durability,
                link,
                readings,
                bytes,
                bytes as f64 / readings.max(1) as f64
            );
        }
    }

    println!();
    println!(
        "drain of a {}-reading backlog into mosquitto (one subscriber counts arrivals)",
        a.backlog
    );
    let bare_prefix = unique("bench/bare");
    let counter = Counter::start(broker.port, &format!("{bare_prefix}/+/+")).await;
    let bare_acked = bare_publisher(broker.port, &bare_prefix, a.backlog).await;
    counter.wait_for(a.backlog).await;
    let bare_span = counter.span();
    drop(counter);
    let drain = agent_drain(&broker, a.backlog).await;

    let rate = |d: Duration| a.backlog as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "{:>44} | {:>9} | {:>12}",
        "publisher", "seconds", "readings/s"
    );
    println!(
        "{:>44} | {:>9.2} | {:>12.0}",
        "bare rumqttc QoS 1 (first publish..last ack)",
        bare_acked.as_secs_f64(),
        rate(bare_acked)
    );
    println!(
        "{:>44} | {:>9.2} | {:>12.0}",
        "bare rumqttc QoS 1 (first..last arrival)",
        bare_span.as_secs_f64(),
        rate(bare_span)
    );
    println!(
        "{:>44} | {:>9.2} | {:>12.0}",
        "fieldlink replay (first..last arrival)",
        drain.span.as_secs_f64(),
        rate(drain.span)
    );
    println!(
        "{:>44} | {:>9.2} | {:>12.0}",
        "fieldlink replay (process start..last)",
        drain.from_start.as_secs_f64(),
        rate(drain.from_start)
    );
    println!(
        "ratio fieldlink / bare (arrival spans): {:.2}",
        rate(drain.span) / rate(bare_span)
    );
    println!(
        "agent RSS: peak (VmHWM) during the drain {:.1} MiB, {:.1} MiB once drained",
        drain.hwm_kib as f64 / 1024.0,
        drain.rss_after_kib as f64 / 1024.0
    );
}
