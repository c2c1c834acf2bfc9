//! Interop: the agent against pymodbus, a Modbus implementation nobody on the project wrote,
//! over TCP, over RTU frames on TCP (a serial device server) and over RTU through a socat pty
//! pair. Needs python3 + pymodbus and socat; when they are missing the tests fail and name
//! the README's test command, which installs them.
mod support;

use std::time::Duration;

use serde_json::json;
use support::agent::{self, Agent};
use support::expect;
use support::modbus::{words, PyModbus};
use support::pty::PtyPair;
use support::watch::Watch;
use support::Broker;

const FIRST_READING: Duration = Duration::from_secs(20);

/// Register map for unit `unit`: the same values as the point list below expects.
fn register_map(unit: u8) -> serde_json::Value {
    let mut holding = serde_json::Map::new();
    let mut put = |addr: u16, ws: Vec<u16>| {
        for (i, w) in ws.into_iter().enumerate() {
            holding.insert((addr + i as u16).to_string(), json!(w));
        }
    };
    put(0, words::i16(-215));
    put(1, words::u32(4_000_000_000));
    put(3, words::f32(-0.15625));
    put(10, words::f64(6.02214076e23));
    put(20, words::ascii("FL-7", 2));
    let input = json!({ "0": 12345, "1": 0, "7": 65535 });
    json!({
        unit.to_string(): {
            "holding": holding,
            "input": input,
            "coil": { "3": 1 },
            "discrete": { "0": 0, "1": 1 },
        }
    })
}

const POINTS: &str = r#"
[[device.point]]
name = "temp"
table = "holding"
address = 0
type = "i16"
scale = 0.1
unit = "°C"

[[device.point]]
name = "counter"
table = "holding"
address = 1
type = "u32"

[[device.point]]
name = "ratio"
table = "holding"
address = 3
type = "f32"

[[device.point]]
name = "avogadro"
table = "holding"
address = 10
type = "f64"

[[device.point]]
name = "level"
table = "input"
address = 0
type = "u16"
scale = 0.01
offset = -10.0

[[device.point]]
name = "raw"
table = "input"
address = 7
type = "i16"

[[device.point]]
name = "pump"
table = "coil"
address = 3
type = "bool"

[[device.point]]
name = "door"
table = "discrete"
address = 1
type = "bool"
"#;

const EXPECTED: &[(&str, f64)] = &[
    ("temp", -21.5),
    ("counter", 4_000_000_000.0),
    ("ratio", -0.15625),
    ("avogadro", 6.02214076e23),
    ("level", 12345.0 * 0.01 - 10.0),
    ("raw", -1.0),
    ("pump", 1.0),
    ("door", 1.0),
];

async fn all_values_arrive(watch: &Watch, prefix: &str, device: &str) {
    for (point, expected) in EXPECTED {
        expect::reading(
            watch,
            &format!("{prefix}/{device}/{point}"),
            *expected,
            FIRST_READING,
        )
        .await;
    }
    expect::status(
        watch,
        &format!("{prefix}/{device}/status"),
        "online",
        FIRST_READING,
    )
    .await;
}

/// Runs the agent with `bus` (a `[[bus]]` table named "peer") and the device `py` of `unit`
/// on it, and waits for every point's value and `online`.
async fn reads_right(bus: &str, unit: u8, name: &str) {
    let broker = Broker::start();
    let prefix = agent::prefix(name);
    let toml = format!(
        "{}\n{bus}\n[[device]]\nname = \"py\"\nbus = \"peer\"\nunit = {unit}\n\
         interval = \"200ms\"\n{POINTS}",
        agent::head(broker.port, &prefix)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    all_values_arrive(&watch, &prefix, "py").await;
}

#[tokio::test]
async fn the_agent_reads_a_pymodbus_tcp_server_right() {
    let py = PyModbus::tcp(&register_map(3));
    let bus = format!(
        "[[bus]]\nname = \"peer\"\ntype = \"modbus_tcp\"\naddress = \"{}\"\ntimeout = \"500ms\"",
        py.address()
    );
    reads_right(&bus, 3, "py-tcp").await;
}

/// A serial device server in raw TCP mode (USR-TCP232, Moxa NPort) carries RTU frames, CRC
/// included, over TCP: pymodbus' RTU framer on a TCP listener stands in for one.
#[tokio::test]
async fn the_agent_reads_a_pymodbus_server_speaking_rtu_frames_over_tcp_right() {
    let py = PyModbus::rtu_tcp(&register_map(4));
    let bus = format!(
        "[[bus]]\nname = \"peer\"\ntype = \"modbus_rtu_tcp\"\naddress = \"{}\"\n\
         response_timeout = \"500ms\"",
        py.address()
    );
    reads_right(&bus, 4, "py-rtu-tcp").await;
}

#[tokio::test]
async fn the_agent_reads_a_pymodbus_rtu_server_over_a_socat_pty_pair_right() {
    let pty = PtyPair::start();
    let py = PyModbus::rtu(&register_map(9), &pty.sim, 19200);
    let bus = format!(
        "[[bus]]\nname = \"peer\"\ntype = \"modbus_rtu\"\npath = \"{}\"\nbaud = 19200\n\
         parity = \"none\"\nresponse_timeout = \"500ms\"\ninter_request_delay = \"10ms\"",
        agent::path_str(&pty.agent)
    );
    reads_right(&bus, 9, "py-rtu").await;
    drop(py);
}
