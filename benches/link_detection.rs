//! Issue 3 bench (printed, not asserted): how long after the last byte from the broker a
//! silently dead link is declared dead, by fieldlink's watchdog and by rumqttc alone, for a
//! few keep-alives; and the idle bytes per hour on the wire (MQTT bytes seen by the proxy).
//!
//! Needs mosquitto. Run:
//!   cargo bench --profile dev --bench link_detection -- --ka 2,5,15 --runs 5 --idle-secs 60
//! (timings are seconds-scale network events, so the dev profile measures the same thing).
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/uplink_agent/mod.rs"]
mod uplink_agent;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use support::proxy::{Mode, Proxy};
use support::{unique, wait_until, Broker};
use uplink_agent::{mqtt, Agent};

const DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    keep_alives: Vec<u64>,
    runs: usize,
    idle: Duration,
}

fn args() -> Args {
    let mut a = Args {
        keep_alives: vec![2, 5, 15],
        runs: 5,
        idle: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--ka" => {
                a.keep_alives = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            }
            "--runs" => a.runs = it.next().and_then(|s| s.parse().ok()).unwrap_or(a.runs),
            "--idle-secs" => {
                a.idle = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(a.idle)
            }
            _ => {} // cargo passes --bench
        }
    }
    a
}

/// Waits for a byte from the broker, then a random part of a keep-alive, so blackholes start
/// at every phase of the ping cycle.
async fn random_phase(proxy: &Proxy, ka: Duration) {
    let bytes = proxy.bytes_down();
    wait_until("traffic from the broker", DEADLINE, || {
        (proxy.bytes_down() > bytes).then_some(())
    })
    .await;
    tokio::time::sleep(ka.mul_f64(fastrand::f64())).await;
}

async fn fieldlink_detection(broker: &Broker, ka: Duration, runs: usize) -> Vec<Duration> {
    let proxy = Proxy::start(broker.port).await;
    let agent = Agent::start(mqtt(proxy.port, &unique("bench/fl"), ka));
    let mut out = Vec::new();
    for run in 0..runs as u64 {
        wait_until("link up", DEADLINE, || {
            (agent.is_up() && agent.link().reconnects == run).then_some(())
        })
        .await;
        random_phase(&proxy, ka).await;
        proxy.set(Mode::Blackhole);
        wait_until("verdict", DEADLINE, || (!agent.is_up()).then_some(())).await;
        out.push(Instant::now() - proxy.last_byte_down().unwrap());
        proxy.set(Mode::Pass);
    }
    out
}

async fn rumqttc_detection(broker: &Broker, ka: Duration, runs: usize) -> Vec<Duration> {
    let proxy = Proxy::start(broker.port).await;
    let mut opts = MqttOptions::new(unique("bench-rumqttc"), "127.0.0.1", proxy.port);
    opts.set_keep_alive(ka);
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    let errors = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let connacks = Arc::new(Mutex::new(0usize));
    let (e, c) = (errors.clone(), connacks.clone());
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => *c.lock().unwrap() += 1,
                Ok(_) => {}
                Err(_) => {
                    e.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let mut out = Vec::new();
    for run in 0..runs {
        wait_until("rumqttc connected", DEADLINE, || {
            (*connacks.lock().unwrap() > run).then_some(())
        })
        .await;
        random_phase(&proxy, ka).await;
        let errors_before = errors.lock().unwrap().len();
        proxy.set(Mode::Blackhole);
        let at = wait_until("rumqttc error", DEADLINE, || {
            errors.lock().unwrap().get(errors_before).copied()
        })
        .await;
        out.push(at - proxy.last_byte_down().unwrap());
        proxy.set(Mode::Pass);
    }
    task.abort();
    out
}

async fn idle_bytes_per_hour(broker: &Broker, ka: Duration, window: Duration) -> f64 {
    let proxy = Proxy::start(broker.port).await;
    let agent = Agent::start(mqtt(proxy.port, &unique("bench/idle"), ka));
    wait_until("link up", DEADLINE, || agent.is_up().then_some(())).await;
    // Skip the connect, birth and first health message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = proxy.bytes_up() + proxy.bytes_down();
    tokio::time::sleep(window).await;
    let bytes = proxy.bytes_up() + proxy.bytes_down() - start;
    bytes as f64 * 3600.0 / window.as_secs_f64()
}

fn stats(v: &[Duration]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    (median, *s.last().unwrap())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let broker = Broker::start();
    println!(
        "{:>5} | {:>8} | {:>22} | {:>22} | {:>16}",
        "KA s", "1.5xKA s", "fieldlink median/max s", "rumqttc median/max s", "idle bytes/hour"
    );
    for &ka_s in &a.keep_alives {
        let ka = Duration::from_secs(ka_s);
        let ours = fieldlink_detection(&broker, ka, a.runs).await;
        let theirs = rumqttc_detection(&broker, ka, a.runs).await;
        let idle = idle_bytes_per_hour(&broker, ka, a.idle).await;
        let (om, ox) = stats(&ours);
        let (tm, tx) = stats(&theirs);
        println!(
            "{:>5} | {:>8.1} | {:>10.2} / {:>9.2} | {:>10.2} / {:>9.2} | {:>16.0}",
            ka_s,
            1.5 * ka_s as f64,
            om,
            ox,
            tm,
            tx,
            idle
        );
    }
    println!(
        "({} blackholes per cell; idle window {:?} incl. the 60 s health message if it falls in)",
        a.runs, a.idle
    );
}
