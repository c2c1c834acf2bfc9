//! Writes from MQTT, end to end: a command published on `<prefix>/<device>/<point>/set`
//! reaches a real Modbus peer through the agent's bus task, is read back, published as the
//! point's new retained reading, and answered once on `…/set/result`. Refused commands never
//! reach the device; a poll read before a write never puts the old value back; a result
//! outlives a dead link, and a command sent while the agent was away never runs.
mod support;

use std::time::Duration;

use serde_json::{json, Value as Json};
use support::agent::{self, Agent};
use support::modbus::{self, words, Bank, Behaviour, SimDevice, Write};
use support::proxy::{Mode, Proxy};
use support::pty::PtyPair;
use support::watch::Watch;
use support::{wait_until, Broker};
use tokio_modbus::prelude::ExceptionCode;

const DEADLINE: Duration = Duration::from_secs(20);

/// setpoint (holding 0, i16, 0.1 °C, 5..30), mode (holding 1, read only), fan (coil 0),
/// eeprom (holding 2, default min_write_interval of 1 s).
const POINTS: &str = r#"
[[device.point]]
name = "setpoint"
address = "40001"
type = "i16"
scale = 0.1
unit = "°C"
writable = true
min = 5.0
max = 30.0
min_write_interval = "0s"
[[device.point]]
name = "mode"
address = "40002"
type = "u16"
[[device.point]]
name = "eeprom"
address = "40003"
type = "u16"
writable = true
[[device.point]]
name = "fan"
table = "coil"
address = 0
writable = true
min_write_interval = "0s"
"#;

fn hvac() -> SimDevice {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[200, 1, 7]);
    dev.set_bits(Bank::Coil, 0, &[false]);
    dev
}

fn config(
    broker_port: u16,
    prefix: &str,
    mqtt_extra: &str,
    address: &str,
    timeout: &str,
) -> String {
    format!(
        "{}{mqtt_extra}\n[[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"{address}\"\n\
         timeout = \"{timeout}\"\n[[device]]\nname = \"hvac\"\nbus = \"lan\"\nunit = 1\n\
         interval = \"100ms\"\n{POINTS}",
        agent::head(broker_port, prefix)
    )
}

/// Publishes `payload` as a command for `point` of `hvac`.
async fn send(watch: &Watch, prefix: &str, point: &str, payload: &Json) {
    let topic = format!("{prefix}/hvac/{point}/set");
    let text = match payload {
        Json::String(bare) => bare.clone(),
        envelope => envelope.to_string(),
    };
    watch.publish(&topic, &text, false).await;
}

/// Waits for the result of `point` whose `id` is `id`.
async fn result(watch: &Watch, prefix: &str, point: &str, id: &str) -> Json {
    let topic = format!("{prefix}/hvac/{point}/set/result");
    watch
        .wait_for(&topic, DEADLINE, |m| m.json()["id"] == id)
        .await
        .json()
}

/// Sends `{"value":value,"id":id}` to `point` and waits for its result.
async fn command(watch: &Watch, prefix: &str, point: &str, value: Json, id: &str) -> Json {
    send(watch, prefix, point, &json!({"value": value, "id": id})).await;
    result(watch, prefix, point, id).await
}

fn results(watch: &Watch, prefix: &str, point: &str) -> Vec<Json> {
    watch
        .on(&format!("{prefix}/hvac/{point}/set/result"))
        .iter()
        .map(|m| m.json())
        .collect()
}

/// The agent is subscribed to commands once its `online` birth is out: the subscription is
/// asked before the birth on every connection.
async fn online(watch: &Watch, prefix: &str) {
    support::expect::status(watch, &format!("{prefix}/status"), "online", DEADLINE).await;
}

#[tokio::test]
async fn a_command_is_written_read_back_published_retained_and_answered_once() {
    let dev = hvac();
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix("cmd-ok");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&config(broker.port, &prefix, "", &sim.address(), "1s"));
    online(&watch, &prefix).await;

    let ok = command(&watch, &prefix, "setpoint", json!(21.5), "c1").await;
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(
        (&ok["requested"], &ok["value"]),
        (&json!(21.5), &json!(21.5))
    );
    assert!(ok["error"].is_null() && ok["ts"].is_u64(), "{ok}");
    assert_eq!(
        dev.writes(),
        [Write::Registers {
            start: 0,
            words: vec![215]
        }]
    );
    watch
        .wait_for(&format!("{prefix}/hvac/setpoint"), DEADLINE, |m| {
            support::expect::has_value(m, 21.5)
        })
        .await;

    // A bare switch word on a coil.
    send(&watch, &prefix, "fan", &json!("ON")).await;
    let on = watch
        .wait_for(&format!("{prefix}/hvac/fan/set/result"), DEADLINE, |_| true)
        .await
        .json();
    assert_eq!(
        (&on["status"], &on["value"]),
        (&json!("ok"), &json!(true)),
        "{on}"
    );
    assert!(on["id"].is_null());
    assert_eq!(
        dev.writes()[1],
        Write::Coils {
            start: 0,
            bits: vec![true]
        }
    );

    // A late subscriber finds the new values retained, and no result: results are answers to
    // someone's command, not state.
    let late = Watch::start(broker.port, &format!("{prefix}/hvac/#")).await;
    let setpoint = format!("{prefix}/hvac/setpoint");
    let fan = format!("{prefix}/hvac/fan");
    late.wait_for(&setpoint, DEADLINE, |m| m.retain).await;
    late.wait_for(&fan, DEADLINE, |m| m.retain).await;
    assert!(support::expect::has_value(&late.on(&setpoint)[0], 21.5));
    assert_eq!(late.on(&fan)[0].json()["value"], true);
    assert!(
        late.snapshot()
            .iter()
            .all(|m| !m.topic.ends_with("/set/result")),
        "a result was retained"
    );
    assert_eq!(
        results(&watch, &prefix, "setpoint").len(),
        1,
        "one result per command"
    );
}

#[tokio::test]
async fn refused_commands_are_answered_in_words_and_never_reach_the_device() {
    let dev = hvac();
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix("cmd-refused");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    // Retained before the agent starts: the broker hands it over as retained on subscribe.
    watch
        .publish(
            &format!("{prefix}/hvac/setpoint/set"),
            "{\"value\":22,\"id\":\"kept\"}",
            true,
        )
        .await;
    let _agent = Agent::start(&config(broker.port, &prefix, "", &sim.address(), "1s"));
    online(&watch, &prefix).await;
    let kept = result(&watch, &prefix, "setpoint", "kept").await;
    assert_eq!(kept["status"], "rejected");
    assert!(
        kept["error"].as_str().unwrap().contains("retained"),
        "{kept}"
    );

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (point, envelope, status, why) in [
        (
            "mode",
            json!({"value":2,"id":"ro"}),
            "rejected",
            "not a writable point",
        ),
        (
            "setpoint",
            json!({"value":30.5,"id":"hi"}),
            "rejected",
            "above the point's max = 30",
        ),
        (
            "setpoint",
            json!({"value":4,"id":"lo"}),
            "rejected",
            "below the point's min = 5",
        ),
        (
            "setpoint",
            json!({"value":21.55,"id":"step"}),
            "rejected",
            "whole number of steps",
        ),
        (
            "setpoint",
            json!({"value":"warm","id":"text"}),
            "rejected",
            "number",
        ),
        (
            "setpoint",
            json!({"value":21,"id":"gone","expires":1000}),
            "expired",
            "its expires",
        ),
        (
            "setpoint",
            json!({"value":21,"id":"stale","ts":now_ms - 60_000}),
            "expired",
            "command_max_age",
        ),
        (
            "setpoint",
            json!({"value":21,"id":"typo","expire":now_ms}),
            "rejected",
            "\"expire\"",
        ),
    ] {
        let got = {
            send(&watch, &prefix, point, &envelope).await;
            result(&watch, &prefix, point, envelope["id"].as_str().unwrap()).await
        };
        assert_eq!(got["status"], status, "{envelope}: {got}");
        let error = got["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{envelope}: expected {why:?} in {got}");
    }
    // Malformed (no id to match on) and a device this gateway does not have.
    send(&watch, &prefix, "setpoint", &json!("21,5")).await;
    watch
        .wait_for(
            &format!("{prefix}/hvac/setpoint/set/result"),
            DEADLINE,
            |m| {
                m.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not a value"))
            },
        )
        .await;
    watch
        .publish(&format!("{prefix}/boiler/flow/set"), "40", false)
        .await;
    let unknown = watch
        .wait_for(
            &format!("{prefix}/boiler/flow/set/result"),
            DEADLINE,
            |_| true,
        )
        .await
        .json();
    assert_eq!(unknown["status"], "rejected");
    assert!(unknown["error"]
        .as_str()
        .unwrap()
        .contains("no device \"boiler\""));
    assert!(dev.writes().is_empty(), "{:?}", dev.writes());

    // min_write_interval (1 s on eeprom): the second of two quick writes is refused.
    let first = command(&watch, &prefix, "eeprom", json!(8), "e1").await;
    assert_eq!(first["status"], "ok", "{first}");
    let second = command(&watch, &prefix, "eeprom", json!(9), "e2").await;
    assert_eq!(second["status"], "rejected", "{second}");
    assert!(second["error"]
        .as_str()
        .unwrap()
        .contains("min_write_interval"));
    assert_eq!(dev.writes().len(), 1, "{:?}", dev.writes());
    assert_eq!(dev.holding(2, 1), [8]);
}

#[tokio::test]
async fn a_device_that_refuses_or_ignores_a_write_gives_a_failed_result_in_words() {
    let dev = hvac();
    dev.refuse_writes(Some(ExceptionCode::IllegalDataValue));
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix("cmd-failed");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&config(broker.port, &prefix, "", &sim.address(), "500ms"));
    online(&watch, &prefix).await;

    let refused = command(&watch, &prefix, "setpoint", json!(25), "x3").await;
    assert_eq!(refused["status"], "failed", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("exception 3 (illegal data value)"),
        "{refused}"
    );
    assert_eq!(
        refused["value"],
        json!(20.0),
        "the read-back: what the device holds"
    );

    dev.refuse_writes(Some(ExceptionCode::ServerDeviceFailure));
    let failed = command(&watch, &prefix, "setpoint", json!(25), "x4").await;
    assert!(
        failed["error"].as_str().unwrap().contains("exception 4"),
        "{failed}"
    );

    dev.refuse_writes(None);
    dev.set_behaviour(Behaviour::Silent);
    let silent = command(&watch, &prefix, "setpoint", json!(25), "quiet").await;
    assert_eq!(silent["status"], "failed", "{silent}");
    assert!(silent["value"].is_null(), "{silent}");
    let error = silent["error"].as_str().unwrap();
    assert!(
        error.contains("the write failed") && error.contains("no reply"),
        "{silent}"
    );
}

/// The read of `setpoint` takes 300 ms, so a command nearly always arrives while a poll's
/// request is on the wire; the value that request read is older than the write, and the poll
/// goes on with one more read (`limit`, too far away to merge) after the write.
async fn a_poll_in_flight_does_not_revert(payload: &str, value_of: fn(&Json) -> Option<f64>) {
    let dev = hvac();
    dev.set_registers(Bank::Holding, 200, &[50]);
    dev.set_late_at(Bank::Holding, 0, Duration::from_millis(300));
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix(&format!("cmd-fence-{payload}"));
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let extra = format!("payload = \"{payload}\"\n");
    let toml = config(broker.port, &prefix, &extra, &sim.address(), "2s")
        + "[[device.point]]\nname = \"limit\"\naddress = \"40201\"\ntype = \"u16\"\n";
    let _agent = Agent::start(&toml);
    online(&watch, &prefix).await;
    let topic = match payload {
        "device" => format!("{prefix}/hvac"),
        _ => format!("{prefix}/hvac/setpoint"),
    };
    watch
        .wait_for(&topic, DEADLINE, |m| value_of(&m.json()) == Some(20.0))
        .await;

    for (round, target) in [25.0, 12.5, 29.9].into_iter().enumerate() {
        let id = format!("w{round}");
        let ok = command(&watch, &prefix, "setpoint", json!(target), &id).await;
        assert_eq!(ok["status"], "ok", "{ok}");
        // Three more polls after the write.
        let seen = watch.on(&topic).len();
        wait_until("three polls after the write", DEADLINE, || {
            let now: Vec<_> = watch.on(&topic);
            (now.len() >= seen + 3).then_some(())
        })
        .await;
        let values: Vec<f64> = watch
            .on(&topic)
            .iter()
            .filter_map(|m| value_of(&m.json()))
            .collect();
        let first_new = values
            .iter()
            .position(|v| support::expect::close(*v, target))
            .unwrap_or_else(|| panic!("{target} never published: {values:?}"));
        assert!(
            values[first_new..]
                .iter()
                .all(|v| support::expect::close(*v, target)),
            "a value read before the write came after it: {values:?}"
        );
    }
}

#[tokio::test]
async fn a_poll_read_before_the_write_never_reverts_the_published_value() {
    a_poll_in_flight_does_not_revert("json", |j| j["value"].as_f64()).await;
}

#[tokio::test]
async fn a_poll_batch_read_before_the_write_never_reverts_the_device_message() {
    a_poll_in_flight_does_not_revert("device", |j| j["values"]["setpoint"].as_f64()).await;
}

#[tokio::test]
async fn a_result_outlives_a_dead_link_and_a_command_sent_while_away_never_runs() {
    let dev = hvac();
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port).await;
    let prefix = agent::prefix("cmd-outage");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let status = format!("{prefix}/status");
    let _agent = Agent::start(&config(proxy.port, &prefix, "", &sim.address(), "5s"));
    online(&watch, &prefix).await;

    // The write lands, then the link dies while the read-back (2 s late) is under way.
    dev.set_behaviour(Behaviour::Late(Duration::from_secs(2)));
    send(
        &watch,
        &prefix,
        "setpoint",
        &json!({"value":23,"id":"during"}),
    )
    .await;
    wait_until("the write reached the device", DEADLINE, || {
        (!dev.writes().is_empty()).then_some(())
    })
    .await;
    proxy.set(Mode::Blackhole);
    watch
        .wait_for(&status, Duration::from_secs(30), |m| m.payload == "offline")
        .await;

    // Nobody is subscribed for the agent now; with a clean session the broker keeps nothing.
    send(&watch, &prefix, "setpoint", &json!({"value":6,"id":"away"})).await;
    dev.set_behaviour(Behaviour::Normal);
    let births = watch.on(&status).len();
    proxy.set(Mode::Pass);
    proxy.drop_blackholed();
    watch
        .wait_for(&status, Duration::from_secs(60), |_| {
            watch.on(&status).len() > births && watch.last_on(&status).unwrap().payload == "online"
        })
        .await;
    let during = result(&watch, &prefix, "setpoint", "during").await;
    assert_eq!(
        (&during["status"], &during["value"]),
        (&json!("ok"), &json!(23.0))
    );

    let after = command(&watch, &prefix, "setpoint", json!(24), "after").await;
    assert_eq!(after["status"], "ok", "{after}");
    assert!(
        results(&watch, &prefix, "setpoint")
            .iter()
            .all(|r| r["id"] != "away"),
        "the command sent while the agent was away was answered"
    );
    assert_eq!(
        dev.writes(),
        [
            Write::Registers {
                start: 0,
                words: vec![230]
            },
            Write::Registers {
                start: 0,
                words: vec![240]
            }
        ],
        "the command sent while away never ran"
    );
}

#[tokio::test]
async fn every_type_and_word_order_round_trips_through_mqtt_with_scale_and_offset() {
    let dev = SimDevice::new(9);
    dev.set_registers(Bank::Holding, 0, &[0; 24]);
    dev.set_bits(Bank::Coil, 3, &[false]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix("cmd-types");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let points = r#"
[[device.point]]
name = "u16"
table = "holding"
address = 0
type = "u16"
writable = true
[[device.point]]
name = "i16"
table = "holding"
address = 1
type = "i16"
scale = 0.5
offset = -40.0
writable = true
[[device.point]]
name = "u32"
table = "holding"
address = 2
type = "u32"
writable = true
[[device.point]]
name = "i32"
table = "holding"
address = 4
type = "i32"
scale = 0.01
writable = true
[[device.point]]
name = "f32"
table = "holding"
address = 6
type = "f32"
writable = true
[[device.point]]
name = "f32_cdab"
table = "holding"
address = 8
type = "f32"
order = "CDAB"
writable = true
[[device.point]]
name = "f64"
table = "holding"
address = 10
type = "f64"
writable = true
[[device.point]]
name = "i64"
table = "holding"
address = 14
type = "i64"
writable = true
[[device.point]]
name = "relay"
table = "coil"
address = 3
writable = true
"#;
    let toml = format!(
        "{}\n[[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"{}\"\n\
         [[device]]\nname = \"hvac\"\nbus = \"lan\"\nunit = 9\ninterval = \"200ms\"\n\
         {points}",
        agent::head(broker.port, &prefix),
        sim.address()
    );
    let _agent = Agent::start(&toml);
    online(&watch, &prefix).await;

    let cases: [(&str, Json, u16, Vec<u16>); 8] = [
        ("u16", json!(65535), 0, vec![65535]),
        ("i16", json!(-52.5), 1, words::i16(-25)),
        ("u32", json!(4_000_000_000u32), 2, words::u32(4_000_000_000)),
        ("i32", json!(-123456.78), 4, words::i32(-12_345_678)),
        ("f32", json!(21.5), 6, words::f32(21.5)),
        ("f32_cdab", json!(-0.25), 8, words::f32_cdab(-0.25)),
        ("f64", json!(1234.5678), 10, words::f64(1234.5678)),
        ("i64", json!(-9_007_199_254_740_993i64), 14, {
            let b = (-9_007_199_254_740_993i64).to_be_bytes();
            words::u16s(&b)
        }),
    ];
    for (point, value, address, expected) in cases {
        let got = command(&watch, &prefix, point, value.clone(), point).await;
        assert_eq!(got["status"], "ok", "{point}: {got}");
        assert_eq!(
            got["value"], value,
            "{point}: the read-back equals the request"
        );
        assert_eq!(
            dev.holding(address, expected.len() as u16),
            expected,
            "{point}: the registers hold what an independent encoder makes of it"
        );
    }
    let relay = command(&watch, &prefix, "relay", json!(true), "relay").await;
    assert_eq!(
        (&relay["status"], &relay["value"]),
        (&json!("ok"), &json!(true))
    );
}

#[tokio::test]
async fn a_command_on_an_rtu_line_runs_between_the_polls_of_the_other_units_over_a_pty() {
    let pty = PtyPair::start();
    let relay = SimDevice::new(2);
    relay.set_bits(Bank::Coil, 4, &[false]);
    let meter = SimDevice::new(3);
    meter.set_registers(Bank::Input, 0, &[2301]);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&relay, &meter]);
    let broker = Broker::start();
    let prefix = agent::prefix("cmd-rtu");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let toml = format!(
        "{}\n[[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"{}\"\nbaud = 19200\n\
         [[device]]\nname = \"hvac\"\nbus = \"rs485\"\nunit = 2\ninterval = \"200ms\"\n\
         [[device.point]]\nname = \"fan\"\ntable = \"coil\"\naddress = 4\nwritable = true\n\
         [[device]]\nname = \"meter\"\nbus = \"rs485\"\nunit = 3\ninterval = \"100ms\"\n\
         [[device.point]]\nname = \"voltage\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n\
         scale = 0.1\n",
        agent::head(broker.port, &prefix),
        pty.agent.display()
    );
    let _agent = Agent::start(&toml);
    online(&watch, &prefix).await;
    let voltage = format!("{prefix}/meter/voltage");
    support::expect::reading(&watch, &voltage, 230.1, DEADLINE).await;

    let on = command(&watch, &prefix, "fan", json!("ON"), "fan-on").await;
    assert_eq!(
        (&on["status"], &on["value"]),
        (&json!("ok"), &json!(true)),
        "{on}"
    );
    assert_eq!(
        relay.writes(),
        [Write::Coils {
            start: 4,
            bits: vec![true]
        }]
    );
    assert!(meter.writes().is_empty());
    let seen = watch.on(&voltage).len();
    wait_until("the meter is still polled", DEADLINE, || {
        (watch.on(&voltage).len() >= seen + 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_newer_command_for_the_same_point_supersedes_the_one_still_waiting() {
    let dev = hvac();
    let sim = modbus::serve_tcp(&[&dev]).await;
    let broker = Broker::start();
    let prefix = agent::prefix("cmd-supersede");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&config(broker.port, &prefix, "", &sim.address(), "3s"));
    online(&watch, &prefix).await;

    // Each read now takes a second: both commands arrive while one is on the wire.
    dev.set_behaviour(Behaviour::Late(Duration::from_secs(1)));
    let before = dev.requests();
    wait_until("a slow read on the wire", DEADLINE, || {
        (dev.requests() > before).then_some(())
    })
    .await;
    send(
        &watch,
        &prefix,
        "setpoint",
        &json!({"value":22,"id":"older"}),
    )
    .await;
    send(
        &watch,
        &prefix,
        "setpoint",
        &json!({"value":23,"id":"newer"}),
    )
    .await;
    let older = result(&watch, &prefix, "setpoint", "older").await;
    assert_eq!(older["status"], "superseded", "{older}");
    let newer = result(&watch, &prefix, "setpoint", "newer").await;
    assert_eq!(
        (&newer["status"], &newer["value"]),
        (&json!("ok"), &json!(23.0))
    );
    assert_eq!(
        dev.writes(),
        [Write::Registers {
            start: 0,
            words: vec![230]
        }],
        "only the newer command was written"
    );
}

/// The README's mosquitto ACL, as written there: only the operators' account may publish
/// commands; the gateway reads its own. A command from anyone else never runs.
#[tokio::test]
async fn the_readme_acl_lets_operators_command_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("# /etc/mosquitto/acl")
        .expect("the README shows an ACL");
    let example = readme[start..].split("```").next().unwrap();
    // Anonymous clients (the test's own watcher) may read, as a dashboard would.
    std::fs::write(&acl, format!("topic read #\n{example}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let broker = Broker::start_with(support::broker::Options {
        persistence: false,
        extra: vec![format!("acl_file {}", acl.display())],
    });
    let dev = hvac();
    let sim = modbus::serve_tcp(&[&dev]).await;
    let gateway = support::unique("gw").replace('.', "-");
    let prefix = format!("fieldlink/{gateway}");
    let toml = config(
        broker.port,
        &prefix,
        &format!("username = \"{gateway}\"\n"),
        &sim.address(),
        "1s",
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let operator = Watch::start_as(broker.port, "operator/none", "operator").await;
    let _agent = Agent::start(&toml);
    online(&watch, &prefix).await;

    // The anonymous watcher may not write: its command is dropped by the broker.
    send(
        &watch,
        &prefix,
        "setpoint",
        &json!({"value":6,"id":"intruder"}),
    )
    .await;
    send(
        &operator,
        &prefix,
        "setpoint",
        &json!({"value":22,"id":"operator"}),
    )
    .await;
    let ok = result(&watch, &prefix, "setpoint", "operator").await;
    assert_eq!(ok["status"], "ok", "{ok}");
    assert!(
        results(&watch, &prefix, "setpoint")
            .iter()
            .all(|r| r["id"] != "intruder"),
        "a command from outside the ACL reached the agent"
    );
    assert_eq!(
        dev.writes(),
        [Write::Registers {
            start: 0,
            words: vec![220]
        }]
    );
}
