//! QoS 1 throughput of the agent against a bare rumqttc publisher in the same run, on the same
//! broker, proxy, in-flight window and payload sizes (a ratio survives a noisy machine).

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::agent_proc::AgentProc;
use crate::names::point_name;
use crate::procfs::{cpu_seconds, status_kb};
use crate::report::Report;
use crate::rig::{
    head_with, mqtt_section, points_per_request, requests, tcp_fleet, wait_for_requests,
};
use crate::support::{self, proxy::Proxy, Broker};
use crate::Args;

/// The agent's own send window (RECORD_WINDOW in src/uplink/mqtt.rs), given to the bare
/// publisher too.
const INFLIGHT: u16 = 512;

/// `variant`: a label and `[buffer]` keys (the default spills to disk past 1000 queued).
pub async fn throughput(report: &mut Report, args: &Args, variant: Option<(&str, &str)>) {
    let scenario = match variant {
        Some((label, _)) => format!("throughput QoS1 {label}"),
        None => "throughput QoS1".to_string(),
    };
    let scenario = scenario.as_str();
    let broker = Broker::start();
    let window = args.window(8, 20);

    // The agent: 12 TCP gateways x 5 meters x 60 points every 10 ms (the shortest interval):
    // 360 000 readings/s asked for, more than the bare publisher gets acknowledged, so the
    // agent runs flat out and the figure is its own limit, not the devices'.
    let proxy = Proxy::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let (fleet, sims, _servers) = tcp_fleet(12, 5, 60, "10ms").await;
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
        .goal = Some((">=", 1.0));
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
