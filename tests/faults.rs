//! Modbus-side faults against the running agent: a TCP server that dies and comes back, and
//! serial ports that are missing or disappear (the pty's link path goes away and returns, as
//! a udev /dev/serial/by-id link does when an adapter is pulled and plugged back).
mod support;

use std::time::{Duration, Instant};

use support::agent::{self, Agent};
use support::expect;
use support::modbus::{self, Bank, SimDevice};
use support::pty::PtyPair;
use support::watch::Watch;
use support::Broker;

const FIRST_READING: Duration = Duration::from_secs(15);

fn one_point_device(name: &str, bus: &str, unit: u8) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
bus = "{bus}"
unit = {unit}
interval = "100ms"

[[device.point]]
name = "v"
table = "holding"
address = 0
type = "u16"
"#
    )
}

fn rtu_bus(path: &str) -> String {
    format!(
        r#"
[[bus]]
name = "rtu0"
type = "modbus_rtu"
path = "{path}"
baud = 19200
parity = "none"
response_timeout = "200ms"
inter_request_delay = "5ms"
"#
    )
}

#[tokio::test]
async fn a_modbus_tcp_server_that_dies_and_restarts_takes_its_device_offline_and_back() {
    let broker = Broker::start();
    let prefix = agent::prefix("tcp-restart");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[100]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let addr = sim.addr;
    let toml = format!(
        r#"{}
[[bus]]
name = "tcp0"
type = "modbus_tcp"
address = "{addr}"
timeout = "300ms"
{}"#,
        agent::head(broker.port, &prefix),
        one_point_device("d1", "tcp0", 1)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&toml);
    let value = format!("{prefix}/d1/v");
    let status = format!("{prefix}/d1/status");
    expect::reading(&watch, &value, 100.0, FIRST_READING).await;
    expect::status(&watch, &status, "online", FIRST_READING).await;

    sim.stop().await;
    expect::status(&watch, &status, "offline", Duration::from_secs(15)).await;
    assert!(
        agent.is_running(),
        "the agent exited when its Modbus server died"
    );

    // A new value, so that a resumed reading cannot be an old one replayed.
    dev.set_registers(Bank::Holding, 0, &[200]);
    let _sim = modbus::serve_tcp_at(addr, &[&dev]).await;
    let back = Instant::now();
    watch
        .wait_for(&value, Duration::from_secs(30), |m| {
            expect::has_value(m, 200.0)
        })
        .await;
    expect::status(&watch, &status, "online", Duration::from_secs(10)).await;
    eprintln!(
        "readings resumed {:?} after the server came back",
        back.elapsed()
    );
    for m in watch.on(&value) {
        assert!(
            expect::has_value(&m, 100.0) || expect::has_value(&m, 200.0),
            "{value}: {}",
            m.payload
        );
    }
}

#[tokio::test]
async fn a_missing_rtu_port_at_start_is_reported_and_picked_up_when_it_appears() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-missing");
    let dir = tempfile::tempdir().unwrap();
    let agent_tty = dir.path().join("ttyUSB-by-id-test");
    let sim_tty = dir.path().join("sim-end");
    let toml = format!(
        "{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus(agent::path_str(&agent_tty)),
        one_point_device("d1", "rtu0", 1)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&toml);
    let shown = agent_tty.display().to_string();
    let line = agent
        .wait_stderr(
            "an error naming the missing serial path",
            Duration::from_secs(15),
            |l| l.contains(&shown),
        )
        .await;
    eprintln!("agent said: {line}");
    expect::status(&watch, &format!("{prefix}/status"), "online", FIRST_READING).await;
    assert!(
        agent.is_running(),
        "the agent gave up on a missing serial port"
    );

    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[777]);
    let pty = PtyPair::at(&sim_tty, &agent_tty);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let appeared = Instant::now();
    expect::reading(
        &watch,
        &format!("{prefix}/d1/v"),
        777.0,
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "first reading {:?} after the port appeared",
        appeared.elapsed()
    );
    expect::status(
        &watch,
        &format!("{prefix}/d1/status"),
        "online",
        Duration::from_secs(5),
    )
    .await;
}

/// Issue 6: the adapter is pulled (the pty and its link vanish) and plugged back at the same
/// path while the agent runs.
#[tokio::test]
async fn an_rtu_port_that_vanishes_and_returns_takes_its_devices_offline_and_back() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-replug");
    let dir = tempfile::tempdir().unwrap();
    let agent_tty = dir.path().join("ttyUSB-by-id-test");
    let sim_tty = dir.path().join("sim-end");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[10]);
    let mut pty = PtyPair::at(&sim_tty, &agent_tty);
    let sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let toml = format!(
        "{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus(agent::path_str(&agent_tty)),
        one_point_device("d1", "rtu0", 1)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&toml);
    let value = format!("{prefix}/d1/v");
    let status = format!("{prefix}/d1/status");
    expect::reading(&watch, &value, 10.0, FIRST_READING).await;
    expect::status(&watch, &status, "online", FIRST_READING).await;

    sim.stop().await;
    pty.unplug();
    expect::status(&watch, &status, "offline", Duration::from_secs(15)).await;
    assert!(
        agent.is_running(),
        "the agent exited when its serial port vanished"
    );

    dev.set_registers(Bank::Holding, 0, &[20]);
    let pty = PtyPair::at(&sim_tty, &agent_tty);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let back = Instant::now();
    watch
        .wait_for(&value, Duration::from_secs(20), |m| {
            expect::has_value(m, 20.0)
        })
        .await;
    expect::status(&watch, &status, "online", Duration::from_secs(5)).await;
    eprintln!(
        "readings resumed {:?} after the port came back",
        back.elapsed()
    );
}
