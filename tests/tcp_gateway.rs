//! Modbus TCP gateways in front of an RS-485 line (Moxa MGate, cheap USR gateways): one
//! address, many unit ids, and often a single connection slot. Several devices on one
//! `modbus_tcp` bus share one connection by default, so such a gateway keeps them all
//! online; a silent unit costs the others a timeout, never their availability.
mod support;

use std::time::Duration;

use support::agent::{self, Agent};
use support::expect;
use support::modbus::{self, Bank, Habit, SimDevice};
use support::watch::Watch;
use support::Broker;

const DEADLINE: Duration = Duration::from_secs(20);

fn config(broker_port: u16, prefix: &str, address: &str, units: &[u8], extra: &str) -> String {
    let mut toml = format!(
        "{}\n[[bus]]\nname = \"gw\"\ntype = \"modbus_tcp\"\naddress = \"{address}\"\n\
         timeout = \"300ms\"\n{extra}",
        agent::head(broker_port, prefix)
    );
    for unit in units {
        toml.push_str(&format!(
            "[[device]]\nname = \"u{unit}\"\nbus = \"gw\"\nunit = {unit}\ninterval = \"200ms\"\n\
             [[device.point]]\nname = \"level\"\naddress = \"40001\"\ntype = \"u16\"\n"
        ));
    }
    toml
}

fn units(ids: &[u8]) -> Vec<SimDevice> {
    ids.iter()
        .map(|&id| {
            let dev = SimDevice::new(id);
            dev.set_registers(Bank::Holding, 0, &[u16::from(id) * 100]);
            dev
        })
        .collect()
}

#[tokio::test]
async fn a_gateway_with_one_connection_slot_keeps_all_five_units_online() {
    let ids = [1, 2, 3, 4, 5];
    let devices = units(&ids);
    let refs: Vec<&SimDevice> = devices.iter().collect();
    let sim = modbus::serve_tcp_with(&refs, Habit::OneAtATime).await;
    let broker = Broker::start();
    let prefix = agent::prefix("gw-one-slot");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&config(broker.port, &prefix, &sim.address(), &ids, ""));

    for id in ids {
        let device = format!("{prefix}/u{id}");
        expect::reading(
            &watch,
            &format!("{device}/level"),
            f64::from(id) * 100.0,
            DEADLINE,
        )
        .await;
        expect::status(&watch, &format!("{device}/status"), "online", DEADLINE).await;
    }
    let topic = format!("{prefix}/u5/level");
    watch
        .wait_for(&topic, DEADLINE, |_| watch.on(&topic).len() >= 5)
        .await;
    assert_eq!(
        sim.turned_away(),
        0,
        "never more than the one connection the gateway takes"
    );
    assert_eq!(sim.connections(), 1, "one connection, kept");
    for id in ids {
        let statuses = expect::statuses(&watch, &format!("{prefix}/u{id}/status"));
        assert!(
            statuses.iter().all(|s| s == "online"),
            "u{id}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn a_silent_unit_on_a_shared_connection_goes_offline_alone() {
    let ids = [1, 2, 3];
    let devices = units(&ids);
    let refs: Vec<&SimDevice> = devices.iter().collect();
    let sim = modbus::serve_tcp(&refs).await;
    let broker = Broker::start();
    let prefix = agent::prefix("gw-silent");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&config(broker.port, &prefix, &sim.address(), &ids, ""));
    for id in ids {
        expect::status(
            &watch,
            &format!("{prefix}/u{id}/status"),
            "online",
            DEADLINE,
        )
        .await;
    }

    devices[1].set_behaviour(modbus::Behaviour::Silent);
    expect::status(&watch, &format!("{prefix}/u2/status"), "offline", DEADLINE).await;
    // The others keep being read (a fresh reading of each after u2 went offline).
    for id in [1, 3] {
        let topic = format!("{prefix}/u{id}/level");
        let before = watch.on(&topic).len();
        watch
            .wait_for(&topic, DEADLINE, |_| watch.on(&topic).len() >= before + 3)
            .await;
        let statuses = expect::statuses(&watch, &format!("{prefix}/u{id}/status"));
        assert!(
            statuses.iter().all(|s| s == "online"),
            "u{id}: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn per_device_connections_can_still_be_asked_for() {
    let ids = [1, 2];
    let devices = units(&ids);
    let refs: Vec<&SimDevice> = devices.iter().collect();
    let sim = modbus::serve_tcp(&refs).await;
    let broker = Broker::start();
    let prefix = agent::prefix("gw-per-device");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let toml = config(
        broker.port,
        &prefix,
        &sim.address(),
        &ids,
        "connection = \"per_device\"\n",
    );
    let _agent = Agent::start(&toml);
    for id in ids {
        expect::reading(
            &watch,
            &format!("{prefix}/u{id}/level"),
            f64::from(id) * 100.0,
            DEADLINE,
        )
        .await;
    }
    assert_eq!(sim.connections(), 2, "one connection per device");
}
