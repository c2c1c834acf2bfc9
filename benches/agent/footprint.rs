//! Footprint: RSS, private memory, CPU per reading and wake-ups of the agent polling a TCP
//! fleet at 1 s, in the steady state.

use std::time::{Duration, Instant};

use crate::agent_proc::AgentProc;
use crate::procfs::{
    cpu_seconds, cpu_ticks_seconds, disk_write_bytes, status_kb, threads, voluntary_switches,
};
use crate::report::Report;
use crate::rig::{
    head_with, mqtt_section, points_per_request, requests, tcp_fleet, wait_for_requests,
};
use crate::support::Broker;
use crate::Args;

/// `variant`: a label and the `[mqtt]` / `[buffer]` keys it adds to the default config.
pub async fn footprint(
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
    let (r0, c0, k0, w0, d0, t0) = (
        requests(&sims),
        cpu_seconds(pid),
        cpu_ticks_seconds(pid),
        voluntary_switches(pid),
        disk_write_bytes(pid),
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
    let disk_bytes = disk_write_bytes(pid).saturating_sub(d0);
    let hwm = status_kb(pid, "VmHWM");
    let n_threads = threads(pid);
    let tail = agent.log_tail();
    agent.stop();

    // Issue 15's goals: steady RSS 6 MiB (5 x 24) and 12 MiB (50 x 40); CPU 0.5 s per
    // 100 000 readings in JSON mode, 0.3 in device mode (5 x 24).
    let rss_goal = match (devices, variant) {
        (5, None) => Some(6.0),
        (50, None) => Some(12.0),
        _ => None,
    };
    let cpu_goal = match (devices, label) {
        (5, "") => Some(0.5),
        (5, " device") => Some(0.3),
        _ => None,
    };
    let row = report.add(
        &scenario,
        "RSS steady (max VmRSS in window)",
        rss_max as f64 / 1024.0,
        "MiB",
    );
    row.goal = rss_goal.map(|g| ("<=", g));
    let row = report.add(&scenario, "RSS peak (VmHWM)", hwm as f64 / 1024.0, "MiB");
    row.note = "start-up (config parsing) peaks above the steady state; the agent gives that \
                back after READY (src/footprint.rs)"
        .into();
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
    row.goal = cpu_goal.map(|g| ("<=", g));
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
    let row = report.add(
        &scenario,
        "disk writes per reading (link up)",
        disk_bytes as f64 / readings.max(1.0),
        "B",
    );
    row.note =
        "write_bytes of /proc/PID/io; outage mode writes nothing while the link keeps up".into();
    let row = report.add(&scenario, "threads", n_threads as f64, "");
    row.note = format!("window {:.0}s; agent log tail: {tail}", elapsed);
}
