//! Idle cost: bytes on the wire, wake-ups and CPU of a connected agent with no devices.
//!
//! The hourly wire figure is computed from its parts, because the health heartbeat (every
//! `health_interval`, 5 min by default) is longer than the window: what crossed the proxy
//! during the window (keep-alive pings, and any health message, taken out again) as an
//! hourly rate, plus 3600 / `health_interval` heartbeats of the size the retained health
//! message has on the wire (its PUBLISH packet, QoS 0).

use std::time::{Duration, Instant};

use crate::agent_proc::AgentProc;
use crate::procfs::{cpu_seconds, status_kb, voluntary_switches};
use crate::report::Report;
use crate::rig::{head, mqtt_section};
use crate::support::{self, proxy::Proxy, watch::Watch, Broker};
use crate::Args;

/// The agent's default `health_interval`.
const HEALTH_INTERVAL_S: f64 = 300.0;
/// Issue 15's goal for an idle gateway at keep-alive 15 s.
const GOAL_BYTES_PER_HOUR: f64 = 3000.0;

pub async fn idle(report: &mut Report, args: &Args) {
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
    // Straight to the broker, not through the proxy: its bytes are not the agent's.
    let health_topic = "bench/idle/health";
    let watch = Watch::start(broker.port, health_topic).await;
    let heartbeat = watch
        .wait_for(health_topic, Duration::from_secs(30), |_| true)
        .await;
    // The heartbeat goes at QoS 0: rumqttc's own size of that packet.
    let heartbeat_bytes = rumqttc::Publish::new(
        health_topic,
        rumqttc::QoS::AtMostOnce,
        heartbeat.payload.clone(),
    )
    .size() as f64;
    let seen_before = watch.on(health_topic).len();
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
    let heartbeats_in_window = watch.on(health_topic).len().saturating_sub(seen_before) as f64;
    watch.stop().await;
    let other = (bytes - heartbeats_in_window * heartbeat_bytes).max(0.0);
    let other_per_hour = other * 3600.0 / elapsed;
    let heartbeats_per_hour = heartbeat_bytes * 3600.0 / HEALTH_INTERVAL_S;
    let wakeups = (voluntary_switches(pid) - w0) as f64 / elapsed;
    let cpu = cpu_seconds(pid) - c0;
    let rss = status_kb(pid, "VmRSS");
    agent.stop();
    let row = report.add(
        scenario,
        "bytes/hour on the wire (both ways)",
        other_per_hour + heartbeats_per_hour,
        "B/h",
    );
    row.goal = Some(("<=", GOAL_BYTES_PER_HOUR));
    row.note = format!(
        "keep_alive 15s: {other_per_hour:.0} B/h measured over {elapsed:.0}s (pings); \
         health heartbeat every {HEALTH_INTERVAL_S:.0}s: {heartbeats_per_hour:.0} B/h"
    );
    println!("    {} (goal <= {GOAL_BYTES_PER_HOUR:.0} B/h)", row.note);
    let row = report.add(
        scenario,
        "health heartbeat on the wire",
        heartbeat_bytes,
        "B",
    );
    row.note = heartbeat.payload.clone();
    report.add(scenario, "wake-ups/s", wakeups, "1/s");
    report.add(scenario, "CPU seconds/hour", cpu * 3600.0 / elapsed, "s/h");
    report.add(scenario, "RSS", rss as f64 / 1024.0, "MiB");
}
