//! `modbus_rtu_tcp`: RTU frames over TCP to a serial device server, against the in-process
//! RTU-over-TCP sim (tokio-modbus' server) with the RS-485 line's faults: a unit that answers
//! late (its reply arrives on the same connection after the timeout), a server that closes the
//! connection after every reply. The interop test against pymodbus is in `interop.rs`.
mod support;

use std::time::Duration;

use support::agent::{self, Agent};
use support::expect;
use support::modbus::{self, Bank, Habit, SimDevice};
use support::watch::Watch;
use support::Broker;

const DEADLINE: Duration = Duration::from_secs(20);

fn config(broker_port: u16, prefix: &str, address: &str, units: &[u8]) -> String {
    let mut toml = format!(
        "{}\n[[bus]]\nname = \"gw\"\ntype = \"modbus_rtu_tcp\"\naddress = \"{address}\"\n\
         response_timeout = \"300ms\"\n",
        agent::head(broker_port, prefix)
    );
    for unit in units {
        toml.push_str(&format!(
            "[[device]]\nname = \"u{unit}\"\nbus = \"gw\"\nunit = {unit}\ninterval = \"200ms\"\n\
             offline_after = 2\n[[device.point]]\nname = \"level\"\naddress = \"40001\"\n\
             type = \"u16\"\n"
        ));
    }
    toml
}

fn unit(id: u8, value: u16) -> SimDevice {
    let dev = SimDevice::new(id);
    dev.set_registers(Bank::Holding, 0, &[value]);
    dev
}

/// The trap of docs/design.md#tokio-modbus-017 on a device server: a reply that comes after
/// the timeout arrives on the same connection, and has the very shape of the next answer
/// (same unit, same function, same quantity), so nothing in the frame tells them apart.
#[tokio::test]
async fn a_late_reply_on_the_servers_line_is_waited_out_never_taken_for_the_next_answer() {
    let dev = SimDevice::new(3);
    dev.set_registers(Bank::Holding, 0, &[1111]);
    dev.set_registers(Bank::Holding, 100, &[3333]);
    // Every read of register 0 is answered 1.5 timeouts late.
    dev.set_late_at(Bank::Holding, 0, Duration::from_millis(450));
    let sim = modbus::serve_rtu_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-tcp-late");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let toml = format!(
        "{}\n[[bus]]\nname = \"gw\"\ntype = \"modbus_rtu_tcp\"\naddress = \"{}\"\n\
         response_timeout = \"300ms\"\n[[device]]\nname = \"u3\"\nbus = \"gw\"\nunit = 3\n\
         interval = \"200ms\"\n[[device.point]]\nname = \"slow\"\naddress = \"40001\"\n\
         type = \"u16\"\n[[device.point]]\nname = \"other\"\naddress = \"40101\"\n\
         type = \"u16\"\n",
        agent::head(broker.port, &prefix),
        sim.address()
    );
    let _agent = Agent::start(&toml);

    let topic = format!("{prefix}/u3/other");
    // Two late replies (the read of `slow` backs off after its first failures), each followed
    // by further reads of `other` that a stray reply could have answered.
    support::wait_until("two late replies and reads after them", DEADLINE, || {
        (dev.late_replies() >= 2 && watch.on(&topic).len() >= 8).then_some(())
    })
    .await;
    let values: Vec<f64> = watch.on(&topic).iter().filter_map(expect::number).collect();
    assert!(
        values.iter().all(|&v| v == 3333.0),
        "`other` only ever shows its own register, never the late reply for `slow`: {values:?}"
    );
    let slow = watch
        .wait_for(&format!("{prefix}/u3/slow"), DEADLINE, |m| {
            m.json()["quality"] == "timeout"
        })
        .await;
    assert!(slow.json()["value"].is_null());
    expect::status(&watch, &format!("{prefix}/u3/status"), "online", DEADLINE).await;
}

#[tokio::test]
async fn a_device_server_that_closes_the_connection_after_every_reply_keeps_its_units_online() {
    let a = unit(5, 55);
    let b = unit(6, 66);
    let sim = modbus::serve_rtu_tcp_with(&[&a, &b], Habit::CloseAfterReply).await;
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-tcp-close");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&config(broker.port, &prefix, &sim.address(), &[5, 6]));

    for (device, value) in [("u5", 55.0), ("u6", 66.0)] {
        expect::reading(&watch, &format!("{prefix}/{device}/level"), value, DEADLINE).await;
        expect::status(
            &watch,
            &format!("{prefix}/{device}/status"),
            "online",
            DEADLINE,
        )
        .await;
    }
    let topic = format!("{prefix}/u5/level");
    watch
        .wait_for(&topic, DEADLINE, |_| watch.on(&topic).len() >= 5)
        .await;
    assert!(sim.connections() >= 5, "a fresh connection per request");
    for device in ["u5", "u6"] {
        let statuses = expect::statuses(&watch, &format!("{prefix}/{device}/status"));
        assert!(
            statuses.iter().all(|s| s == "online"),
            "{device} never went offline: {statuses:?}"
        );
    }
}
