//! The peers the agent is measured against: config text, drifting Modbus meters and TCP
//! fleets of them (`fieldlink::sim`), and the agent planner's own count of readings a request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fieldlink::config::WordOrder;
use fieldlink::poll::modbus::plan::plan_groups;
use fieldlink::sim::{self, SimDevice, WireTiming};
use tokio::net::TcpListener;

use crate::names::point_name;
use crate::support;

pub fn mqtt_section(port: u16, prefix: &str, extra: &str) -> String {
    format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nprefix = \"{prefix}\"\n{extra}\n")
}

/// `FIELDLINK_BENCH_BUFFER` adds keys to every agent's `[buffer]` (e.g.
/// "spill_threshold = 100000"), to see what a buffer setting costs.
pub fn head(dir: &Path, mqtt: &str) -> String {
    head_with(dir, mqtt, "")
}

/// [`head`] with `[buffer]` keys of the scenario's own.
pub fn head_with(dir: &Path, mqtt: &str, buffer: &str) -> String {
    let extra = std::env::var("FIELDLINK_BENCH_BUFFER").unwrap_or_default();
    format!(
        "[gateway]\nid = \"bench\"\n\n{mqtt}\n[buffer]\npath = \"{}\"\n{buffer}\n{extra}\n\n[log]\nlevel = \"warn\"\n\n",
        dir.display()
    )
}

pub fn f32_points(n: usize) -> String {
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
pub fn drifting_meter(unit: u8, points: usize) -> Arc<SimDevice> {
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
pub async fn tcp_fleet(
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

pub fn requests(devices: &[Arc<SimDevice>]) -> u64 {
    devices.iter().map(|d| d.requests()).sum()
}

/// Readings per device request, from the agent's own planner (checked, not assumed).
pub fn points_per_request(config: &str) -> f64 {
    let cfg = fieldlink::config::load_str(Path::new("bench.toml"), config).unwrap();
    let dev = &cfg.devices[0];
    let reqs: usize = plan_groups(dev).iter().map(|g| g.requests.len()).sum();
    dev.modbus().map_or(0, |m| m.points.len()) as f64 / reqs as f64
}

/// An RS-485 line as the agent sees it: a pty that keeps the wire timing of `baud` 8E1 (11
/// bits a character, 5 ms turnaround), `devices` answering on its other side. The agent opens
/// the returned path; the returned port must stay open while it runs.
pub fn timed_rtu_line(
    baud: u32,
    devices: Vec<Arc<SimDevice>>,
) -> (
    String,
    WireTiming,
    tokio_serial::SerialStream,
    tokio::task::JoinHandle<()>,
) {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("pty path");
    let timing = WireTiming {
        baud,
        bits_per_char: 11,
        turnaround: Duration::from_millis(5),
    };
    let server = sim::serve_rtu_timed(master, devices, timing);
    (path, timing, slave, server)
}

pub async fn wait_for_requests(devices: &[Arc<SimDevice>], what: &str) {
    support::wait_until(what, Duration::from_secs(30), || {
        (requests(devices) > devices.len() as u64).then_some(())
    })
    .await;
}
