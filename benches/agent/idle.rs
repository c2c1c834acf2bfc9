//! Idle cost: bytes on the wire, wake-ups and CPU of a connected agent with no devices.

use std::time::{Duration, Instant};

use crate::agent_proc::AgentProc;
use crate::procfs::{cpu_seconds, status_kb, voluntary_switches};
use crate::report::Report;
use crate::rig::{head, mqtt_section};
use crate::support::{self, proxy::Proxy, Broker};
use crate::Args;

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
