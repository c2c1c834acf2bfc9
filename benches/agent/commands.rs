//! Command latency (issue 12): from the publish of a `…/set` command to the arrival of its
//! `…/set/result` at a subscriber, while the device is polled every 100 ms, on Modbus TCP
//! loopback and on RTU over a pty that keeps the wire timing of the baud rate. The RTU figure
//! is set against the wire-time bound of the worst case: one poll request already on the
//! wire, then the write and the read-back.
//!
//! On TCP the figure is mostly Nagle's algorithm, not the agent: the read-back reading and the
//! result are two small writes back to back, and the second waits for the broker's delayed
//! ACK of the first (about 40 ms on Linux). Measured once with TCP_NODELAY on both the agent's
//! socket and mosquitto (`set_tcp_nodelay true`): 0.7 ms median, 2 ms p99. The agent keeps
//! Nagle on for now, as coalescing bursts of readings saves headers on a cellular link.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldlink::sim::{self, SimDevice};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::agent_proc::AgentProc;
use crate::report::Report;
use crate::rig::{
    drifting_meter, f32_points, head, mqtt_section, timed_rtu_line, wait_for_requests,
};
use crate::support::Broker;
use crate::Args;

const PREFIX: &str = "bench/cmd";
/// The writable point, far enough from the 24 f32 (holding 0..47) to be a read of its own.
const SETPOINT: u16 = 100;

fn device_section(bus: &str) -> String {
    format!(
        "[[device]]\nname = \"meter\"\nbus = \"{bus}\"\nunit = 1\ninterval = \"100ms\"\n\n{}\
         [[device.point]]\nname = \"setpoint\"\naddress = \"{}\"\ntype = \"u16\"\n\
         writable = true\nmin_write_interval = \"0s\"\n\n",
        f32_points(24),
        40001 + SETPOINT
    )
}

fn meter() -> Arc<SimDevice> {
    let meter = drifting_meter(1, 24);
    meter.with_banks(|b| b.set_holding(SETPOINT, &[0]));
    meter
}

/// `baud`: RTU at that rate over a timed pty; `None`: Modbus TCP on loopback.
pub async fn commands(report: &mut Report, args: &Args, baud: Option<u32>) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let meter = meter();
    let mut config = head(dir.path(), &mqtt_section(broker.port, PREFIX, ""));
    let mut keep = Vec::new();
    let mut pty_slave = None;
    let (scenario, bound) = match baud {
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            keep.push(sim::serve_tcp(listener, vec![meter.clone()]));
            config.push_str(&format!(
                "[[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"127.0.0.1:{port}\"\n\n{}",
                device_section("lan")
            ));
            ("commands, TCP".to_string(), None)
        }
        Some(baud) => {
            let (path, timing, slave, server) = timed_rtu_line(baud, vec![meter.clone()]);
            keep.push(server);
            pty_slave = Some(slave);
            config.push_str(&format!(
                "[[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"{path}\"\nbaud = {baud}\n\
                 parity = \"even\"\nresponse_timeout = \"1s\"\n\n{}",
                device_section("rs485")
            ));
            // The largest poll request (24 f32 = 48 registers), then the write (FC06, echoed)
            // and the read-back (one register), each followed by the inter-request delay.
            let gap = Duration::from_millis(20);
            let bound = timing.exchange(8, 5 + 96)
                + timing.exchange(8, 8)
                + timing.exchange(8, 7)
                + gap * 3;
            (format!("commands, RTU {baud}"), Some(bound))
        }
    };
    let agent = AgentProc::start(&config, dir);
    wait_for_requests(std::slice::from_ref(&meter), "the agent polling the meter").await;

    let (client, mut results) = results_client(broker.port).await;
    let count = if args.quick { 50 } else { 200 };
    let mut latencies = Vec::with_capacity(count);
    let mut rng = fastrand::Rng::with_seed(12);
    let set = format!("{PREFIX}/meter/setpoint/set");
    for i in 0..count {
        // Land on a random phase of the poll cycle.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
        let id = i.to_string();
        let payload = format!("{{\"value\":{},\"id\":\"{id}\"}}", i % 1000);
        let sent = Instant::now();
        client
            .publish(&set, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(10), results.recv())
                .await
                .unwrap_or_else(|_| panic!("no result for command {id}: {}", agent.log_tail()))
                .expect("results client alive");
            if got["id"] == id.as_str() {
                assert_eq!(got["status"], "ok", "command {id}: {got}");
                latencies.push(at - sent);
                break;
            }
        }
    }
    agent.stop();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    report
        .add(&scenario, "command to result, median", ms(median), "ms")
        .note = format!("{count} commands, device polled every 100 ms");
    report.add(&scenario, "command to result, p99", ms(p99), "ms");
    if let Some(bound) = bound {
        report.add(
            &scenario,
            "wire bound: one poll request + write + read-back",
            ms(bound),
            "ms",
        );
        report.add(&scenario, "ratio p99 / bound", ms(p99) / ms(bound), "");
    }
    drop((keep, pty_slave));
}

/// A client subscribed to every result: each arrives with its arrival time.
async fn results_client(
    port: u16,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<(serde_json::Value, Instant)>,
) {
    let mut opts = MqttOptions::new("bench-commands", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    // The controller's own Nagle delay (its PUBACK of the last result unacknowledged, the
    // next command held back for the broker's delayed ACK) is not the agent's latency.
    eventloop.network_options.set_tcp_nodelay(true);
    client
        .subscribe(format!("{PREFIX}/+/+/set/result"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subacked = Some(subacked_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subacked.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    if let Ok(json) = serde_json::from_slice(&p.payload) {
                        if tx.send((json, at)).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subacked_rx)
        .await
        .expect("SUBACK")
        .unwrap();
    (client, rx)
}
