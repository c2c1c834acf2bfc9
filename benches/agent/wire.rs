//! Wire bytes per reading for each payload mode, counted by a proxy in front of the broker.

use std::time::{Duration, Instant};

use crate::agent_proc::AgentProc;
use crate::report::Report;
use crate::rig::{head, mqtt_section, points_per_request, requests, tcp_fleet, wait_for_requests};
use crate::support::watch::Watch;
use crate::support::{proxy::Proxy, Broker};
use crate::Args;

pub async fn wire_bytes(report: &mut Report, args: &Args) {
    let modes: [(&str, &str); 7] = [
        ("json", "payload = \"json\""),
        ("plain", "payload = \"plain\""),
        ("device", "payload = \"device\""),
        ("compact", "payload = \"compact\""),
        (
            "compact+deadband 0.5",
            "payload = \"compact\"\ndeadband = 0.5",
        ),
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
        // Where a compact message's bytes go, read off the messages themselves (this
        // subscriber talks to the broker directly, not through the counting proxy).
        let watch = if name == "compact" {
            Some(Watch::start(broker.port, "fl/gw-0001/+").await)
        } else {
            None
        };
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
        if name == "compact" {
            row.goal = Some(("<=", 8.0));
        }
        row.note = format!("window {elapsed:.0}s, {readings:.0} readings; prefix fl/gw-0001, 10-13 char point names");
        if let Some(watch) = watch {
            row.note
                .push_str(&compact_breakdown(&watch, up / readings.max(1.0)));
        }
        report.add(
            &scenario,
            "bytes from broker per reading (acks)",
            down / readings.max(1.0),
            "B",
        );
    }
}

/// `; per reading: values V B, envelope E B (ts, seq, boot, m, keys), MQTT header and topic
/// H B` for the compact messages `watch` saw, `up` being the measured bytes per reading.
fn compact_breakdown(watch: &Watch, up: f64) -> String {
    let (mut payload, mut values, mut readings) = (0usize, 0usize, 0usize);
    for m in watch.snapshot() {
        let json = m.json();
        let Some(v) = json["v"].as_array() else {
            continue;
        };
        let Some(start) = m.payload.find("\"v\":[") else {
            continue;
        };
        let end = m.payload[start..]
            .find(']')
            .map_or(m.payload.len(), |e| start + e);
        payload += m.payload.len();
        // The array's text between the brackets: numbers and their commas.
        values += end - (start + 5);
        readings += v.len();
    }
    if readings == 0 {
        return String::new();
    }
    let r = readings as f64;
    format!(
        "; per reading: values {:.2} B, envelope {:.2} B (ts, seq, boot, m, keys), MQTT header+topic+ack overhead {:.2} B",
        values as f64 / r,
        (payload - values) as f64 / r,
        up - payload as f64 / r
    )
}
