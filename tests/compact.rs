//! `payload = "compact"` end to end: the real agent binary between a real mosquitto and an
//! in-process Modbus TCP device. A compact message read with its meta must give exactly
//! the values json mode publishes for the same registers; the meta is retained, names the
//! version every message references, and gets a new version when the point list changes.
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value as Json};
use support::agent::{self, Agent};
use support::modbus::{self, words, Bank, SimDevice};
use support::watch::{Message, Watch};
use support::{wait_until, Broker};

const DEADLINE: Duration = Duration::from_secs(20);

/// One point of every data type, with scale and offset, values chosen so that a wrong type,
/// word order or scale, or an f32 widened the long way (230.10000610351562), gives a
/// different number. `missing` sits where the device maps nothing (exception 2).
fn meter() -> SimDevice {
    let d = SimDevice::new(1);
    d.set_registers(Bank::Holding, 0, &[0; 64])
        .set_registers(Bank::Input, 0, &[0; 64])
        .set_bits(Bank::Coil, 0, &[false; 16])
        .set_registers(Bank::Holding, 0, &words::i16(-123))
        .set_registers(Bank::Input, 10, &words::u32(305_419_896))
        .set_registers(Bank::Holding, 20, &words::f32(230.1))
        .set_registers(Bank::Holding, 22, &words::f32(1.0 / 3.0))
        .set_registers(Bank::Holding, 30, &words::f32_cdab(-1234.5))
        .set_registers(Bank::Holding, 34, &words::f32(3.0e38))
        .set_registers(Bank::Holding, 40, &words::f64(0.1))
        .set_registers(Bank::Input, 40, &words::i32(-70_000))
        .set_registers(Bank::Holding, 50, &words::ascii("SDM120", 4))
        .set_registers(Bank::Holding, 60, &[12_345])
        .set_registers(Bank::Holding, 61, &[7])
        .set_bits(Bank::Coil, 0, &[false, true]);
    d
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
name = "energy"
table = "input"
address = 10
type = "u32"
unit = "Wh"
[[device.point]]
name = "voltage"
table = "holding"
address = 20
type = "f32"
unit = "V"
[[device.point]]
name = "third"
table = "holding"
address = 22
type = "f32"
[[device.point]]
name = "power"
table = "holding"
address = 30
type = "f32"
order = "CDAB"
unit = "W"
[[device.point]]
name = "huge"
table = "holding"
address = 34
type = "f32"
[[device.point]]
name = "ratio"
table = "holding"
address = 40
type = "f64"
[[device.point]]
name = "flow"
table = "input"
address = 40
type = "i32"
[[device.point]]
name = "model"
table = "holding"
address = 50
type = "string"
registers = 4
[[device.point]]
name = "level"
table = "holding"
address = 60
type = "u16"
scale = 0.01
offset = -5.0
unit = "m"
[[device.point]]
name = "setpoint"
table = "holding"
address = 61
type = "u16"
writable = true
min_write_interval = "0s"
[[device.point]]
name = "stopped"
table = "coil"
address = 0
type = "bool"
[[device.point]]
name = "relay"
table = "coil"
address = 1
type = "bool"
[[device.point]]
name = "missing"
table = "holding"
address = 1000
type = "u16"
"#;

fn config(broker_port: u16, prefix: &str, payload: &str, address: &str, interval: &str) -> String {
    format!(
        "{}payload = \"{payload}\"\n\n[[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\n\
         address = \"{address}\"\ntimeout = \"300ms\"\n\n[[device]]\nname = \"m1\"\nbus = \"lan\"\n\
         unit = 1\ninterval = \"{interval}\"\n{POINTS}",
        agent::head(broker_port, prefix)
    )
}

/// A compact message read with its meta: point name to (value as json mode has it, quality).
fn decode(meta: &Json, message: &Json) -> BTreeMap<String, (Json, Option<String>)> {
    assert_eq!(meta["m"], message["m"], "decoded with its own meta version");
    let points = meta["points"].as_array().unwrap();
    let values = message["v"].as_array().unwrap();
    assert_eq!(
        points.len(),
        values.len(),
        "one value per point of the meta"
    );
    points
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (p, v))| {
            let value = match (p["type"].as_str().unwrap(), v) {
                ("bool", Json::Number(n)) => Json::Bool(n.as_u64().unwrap() == 1),
                (_, v) => v.clone(),
            };
            let quality = message["q"][i.to_string()].as_str().map(str::to_owned);
            (p["name"].as_str().unwrap().to_owned(), (value, quality))
        })
        .collect()
}

fn newest_compact(watch: &Watch, topic: &str, version: &str) -> Option<Message> {
    watch
        .on(topic)
        .into_iter()
        .rev()
        .find(|m| m.json()["m"] == version)
}

#[tokio::test]
async fn compact_messages_read_with_the_meta_are_exactly_what_json_mode_publishes() {
    let broker = Broker::start();
    let sim = modbus::serve_tcp(&[&meter()]).await;
    let json_prefix = agent::prefix("cmp-json");
    let compact_prefix = agent::prefix("cmp-compact");
    let watch = Watch::start(broker.port, "t/#").await;
    let _json = Agent::start(&config(
        broker.port,
        &json_prefix,
        "json",
        &sim.address(),
        "200ms",
    ));
    let _compact = Agent::start(&config(
        broker.port,
        &compact_prefix,
        "compact",
        &sim.address(),
        "200ms",
    ));

    let meta_topic = format!("{compact_prefix}/m1/meta");
    let meta = watch
        .wait_for(&meta_topic, DEADLINE, |m| {
            m.retain || m.json()["m"].is_string()
        })
        .await
        .json();
    let version = meta["m"].as_str().unwrap().to_owned();
    assert_eq!(
        meta["points"][2],
        json!({"name":"voltage","type":"number","unit":"V"}),
        "{meta}"
    );
    assert_eq!(meta["points"][11], json!({"name":"stopped","type":"bool"}));
    let device_topic = format!("{compact_prefix}/m1");
    let message = watch
        .wait_for(&device_topic, DEADLINE, |m| {
            m.json()["v"].as_array().is_some_and(|v| v.len() == 14)
        })
        .await;
    let decoded = decode(&meta, &message.json());
    // Every later message carries the meta's version and the same values.
    let names: Vec<&str> = decoded.keys().map(String::as_str).collect();
    for name in decoded.keys() {
        wait_until("json mode's reading of every point", DEADLINE, || {
            watch.last_on(&format!("{json_prefix}/m1/{name}"))
        })
        .await;
    }
    for (name, (value, quality)) in &decoded {
        // json mode publishes a bad point once; its last message is that one.
        let json_reading = watch
            .last_on(&format!("{json_prefix}/m1/{name}"))
            .unwrap()
            .json();
        assert_eq!(
            value, &json_reading["value"],
            "{name}: compact {value} vs json {json_reading} ({names:?})"
        );
        assert_eq!(
            quality.as_deref(),
            json_reading["quality"].as_str(),
            "{name}: the reason a point has no value"
        );
    }
    assert_eq!(decoded["voltage"].0, json!(230.1));
    assert_eq!(decoded["missing"], (Json::Null, Some("exception:2".into())));
    // The shortest exact forms are on the wire as such.
    assert!(message.payload.contains("230.1,"), "{}", message.payload);
    assert!(
        message.payload.contains(",0,1,null]"),
        "bools as digits: {}",
        message.payload
    );
    assert_eq!(message.json()["boot"], 1);
    let seqs: Vec<u64> = watch
        .on(&device_topic)
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "one seq a message"
    );
    assert!(watch.on(&format!("{compact_prefix}/m1/voltage")).is_empty());
    assert_eq!(
        watch.on(&meta_topic).len(),
        1,
        "the meta goes out once while the point list stays"
    );
    assert!(watch
        .on(&device_topic)
        .iter()
        .all(|m| m.json()["m"] == version));
}

#[tokio::test]
async fn a_late_subscriber_gets_the_meta_and_the_newest_message_and_a_new_point_list_gets_a_new_version(
) {
    let broker = Broker::start();
    let sim = modbus::serve_tcp(&[&meter()]).await;
    let prefix = agent::prefix("cmp-late");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let toml = config(broker.port, &prefix, "compact", &sim.address(), "200ms");
    let agent = Agent::start(&toml);
    let device_topic = format!("{prefix}/m1");
    let meta_topic = format!("{prefix}/m1/meta");
    watch.wait_for(&device_topic, DEADLINE, |_| true).await;

    let late = Watch::start(broker.port, &format!("{prefix}/m1/#")).await;
    let late_device = Watch::start(broker.port, &device_topic).await;
    let meta = late
        .wait_for(&meta_topic, DEADLINE, |m| m.retain)
        .await
        .json();
    let retained = late_device
        .wait_for(&device_topic, DEADLINE, |m| m.retain)
        .await
        .json();
    let decoded = decode(&meta, &retained);
    assert_eq!(decoded["voltage"].0, json!(230.1));

    // A point added in the middle of the list moves the ones after it: a new version.
    let old_version = meta["m"].as_str().unwrap().to_owned();
    let more = toml.replace(
        "[[device.point]]\nname = \"ratio\"",
        "[[device.point]]\nname = \"extra\"\ntable = \"holding\"\naddress = 45\ntype = \"u16\"\n[[device.point]]\nname = \"ratio\"",
    );
    assert_ne!(more, toml);
    std::fs::write(&agent.config.path, &more).unwrap();
    agent.signal(libc::SIGHUP);
    let new_meta = watch
        .wait_for(&meta_topic, DEADLINE, |m| m.json()["m"] != old_version)
        .await
        .json();
    let new_version = new_meta["m"].as_str().unwrap().to_owned();
    assert_eq!(
        new_meta["points"][6],
        json!({"name":"extra","type":"number"})
    );
    let message = wait_until("a message of the new layout", DEADLINE, || {
        newest_compact(&watch, &device_topic, &new_version)
    })
    .await;
    let decoded = decode(&new_meta, &message.json());
    assert_eq!(decoded["ratio"].0, json!(0.1));
    // The meta is published before any message that references it.
    let order: Vec<Message> = watch.snapshot();
    let meta_at = order
        .iter()
        .position(|m| m.topic == meta_topic && m.json()["m"] == new_version.as_str())
        .unwrap();
    let first_new = order
        .iter()
        .position(|m| m.topic == device_topic && m.json()["m"] == new_version.as_str())
        .unwrap();
    assert!(meta_at < first_new);

    // The same map after a restart keeps its version: a consumer's meta stays good.
    let mut agent = agent;
    agent.sigterm();
    agent.wait_exit(DEADLINE).await;
    agent.restart();
    let restarted = wait_until("a message of the next boot", DEADLINE, || {
        watch
            .on(&device_topic)
            .into_iter()
            .find(|m| m.json()["boot"] == 2)
    })
    .await;
    assert_eq!(restarted.json()["m"], new_version.as_str());
}

#[tokio::test]
async fn a_write_is_read_back_in_a_compact_message_at_once() {
    let broker = Broker::start();
    let sim = modbus::serve_tcp(&[&meter()]).await;
    let prefix = agent::prefix("cmp-write");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    // Polled once an hour: the message after the write can only be its read-back.
    let _agent = Agent::start(&config(
        broker.port,
        &prefix,
        "compact",
        &sim.address(),
        "1h",
    ));
    let device_topic = format!("{prefix}/m1");
    let meta = watch
        .wait_for(&format!("{prefix}/m1/meta"), DEADLINE, |_| true)
        .await
        .json();
    let first = watch.wait_for(&device_topic, DEADLINE, |_| true).await;
    assert_eq!(decode(&meta, &first.json())["setpoint"].0, json!(7));
    watch
        .publish(
            &format!("{prefix}/m1/setpoint/set"),
            r#"{"value":42,"id":"w1"}"#,
            false,
        )
        .await;
    let result = watch
        .wait_for(
            &format!("{prefix}/m1/setpoint/set/result"),
            DEADLINE,
            |_| true,
        )
        .await
        .json();
    assert_eq!(result["status"], "ok", "{result}");
    let after = wait_until("the read-back in a compact message", DEADLINE, || {
        let on = watch.on(&device_topic);
        (on.len() >= 2).then(|| on[1].clone())
    })
    .await;
    let decoded = decode(&meta, &after.json());
    assert_eq!(decoded["setpoint"].0, json!(42));
    assert_eq!(
        decoded["voltage"].0,
        json!(230.1),
        "the other points as last read"
    );
    assert_eq!(
        watch.on(&device_topic).len(),
        2,
        "nothing but the read-back"
    );
}
