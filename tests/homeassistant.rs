//! Home Assistant MQTT discovery (issue 13 item 1).
//!
//! Golden files hold the exact discovery payloads of every shipped profile and of a config
//! with every kind of entity in each payload mode (`FIELDLINK_BLESS=1 cargo test --test
//! homeassistant` rewrites them; review the diff). The agent binary, a real mosquitto and a
//! Modbus TCP simulator then show the configs published retained, put back when Home
//! Assistant announces itself and when the broker lost them, cleared for a point removed
//! from the map, not sent again for an unchanged map, and nothing at all with discovery off.
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fieldlink::config;
use fieldlink::homeassistant::{discovery_configs, BIRTH_SETTLE};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::agent::{self, Agent};
use support::modbus::{serve_tcp, words, Bank, SimDevice};
use support::watch::Watch;
use support::{unique, wait_until, Broker};

const DEADLINE: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------------ golden payloads

/// The shipped profile `name` on one RTU device, discovery on.
fn profile_on_a_device(name: &str) -> String {
    format!(
        "[gateway]\nid = \"golden\"\n[mqtt]\nurl = \"mqtt://localhost\"\n\
         [homeassistant]\nenabled = true\n\
         [[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\n\
         [[device]]\nname = \"{name}\"\nbus = \"rs485\"\nunit = 1\nprofile = \"{name}\"\n"
    )
}

/// Every golden case: its file name and its config.
fn golden_cases() -> Vec<(String, config::Config)> {
    let mut cases = Vec::new();
    let mut profiles: Vec<PathBuf> = std::fs::read_dir(repo().join("config/profiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    profiles.sort();
    assert!(!profiles.is_empty());
    for profile in profiles {
        let stem = profile.file_stem().unwrap().to_string_lossy().into_owned();
        // Loaded as if it sat in config/, so the profile is found in config/profiles/.
        let config = config::load_str(
            &repo().join("config/golden.toml"),
            &profile_on_a_device(&stem),
        )
        .unwrap_or_else(|e| panic!("profile {stem} with discovery should load, but:\n{e}"));
        cases.push((format!("profile-{stem}.json"), config));
    }
    let every = repo().join("tests/golden/homeassistant/every-entity.toml");
    let text = std::fs::read_to_string(&every).unwrap();
    for mode in ["json", "plain", "device", "compact"] {
        let text = text.replace(
            "prefix = \"site/gw-7\"",
            &format!("prefix = \"site/gw-7\"\npayload = \"{mode}\""),
        );
        let config = config::load_str(&every, &text)
            .unwrap_or_else(|e| panic!("every-entity.toml ({mode}) should load, but:\n{e}"));
        cases.push((format!("every-entity-{mode}.json"), config));
    }
    cases
}

/// The configs as a reviewer reads them: one entry per topic, payloads pretty-printed.
fn printed(config: &config::Config) -> String {
    let list: Vec<serde_json::Value> = discovery_configs(config)
        .into_iter()
        .map(|c| {
            let payload: serde_json::Value = serde_json::from_slice(&c.payload).unwrap();
            serde_json::json!({"topic": c.topic, "payload": payload})
        })
        .collect();
    serde_json::to_string_pretty(&list).unwrap() + "\n"
}

#[test]
fn discovery_payloads_of_every_shipped_profile_and_payload_mode_are_the_golden_ones() {
    let dir = repo().join("tests/golden/homeassistant");
    let bless = std::env::var_os("FIELDLINK_BLESS").is_some();
    let mut differ = Vec::new();
    let mut expected = vec![dir.join("every-entity.toml")];
    for (name, config) in golden_cases() {
        let text = printed(&config);
        let path = dir.join(&name);
        expected.push(path.clone());
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no golden file {} ({e}): run FIELDLINK_BLESS=1 cargo test --test homeassistant, review and commit it",
                path.display()
            )
        });
        if text != golden {
            let line = text
                .lines()
                .zip(golden.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            differ.push(format!(
                "{}: line {}:\n  golden:  {:?}\n  printed: {:?}",
                path.display(),
                line + 1,
                golden.lines().nth(line).unwrap_or("<end>"),
                text.lines().nth(line).unwrap_or("<end>")
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "discovery payloads changed (if meant, rewrite them with FIELDLINK_BLESS=1 cargo test \
         --test homeassistant and review the diff):\n{}",
        differ.join("\n")
    );
    let mut stale: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !expected.contains(p))
        .collect();
    stale.sort();
    assert!(stale.is_empty(), "golden files nothing produces: {stale:?}");
}

/// Every discovery topic is one Home Assistant accepts, every unique id is unique, every
/// default entity id is a valid entity id, and every point's availability list ends in the
/// gateway's and the device's status.
#[test]
fn every_golden_config_has_valid_ids_and_the_availability_of_gateway_and_device() {
    for (name, config) in golden_cases() {
        let mut unique_ids = std::collections::HashSet::new();
        for c in discovery_configs(&config) {
            let levels: Vec<&str> = c.topic.split('/').collect();
            assert!(
                levels[1..].iter().all(|l| !l.is_empty()
                    && l.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')),
                "{name}: {}",
                c.topic
            );
            let p: serde_json::Value = serde_json::from_slice(&c.payload).unwrap();
            assert!(unique_ids.insert(p["unique_id"].as_str().unwrap().to_owned()));
            let entity = p["default_entity_id"].as_str().unwrap();
            let (domain, object) = entity.split_once('.').unwrap();
            assert_eq!(domain, levels[1], "{name}: {entity}");
            assert_eq!(object, p["object_id"], "{name}: {entity}");
            assert!(
                !object.starts_with('_')
                    && !object.ends_with('_')
                    && !object.contains("__")
                    && object
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
                "{name}: {entity}"
            );
            assert_eq!(p["origin"]["name"], "fieldlink");
            if p["device"]["via_device"].is_string() {
                let availability = p["availability"].as_array().unwrap();
                assert_eq!(p["availability_mode"], "all");
                assert_eq!(
                    availability[0]["topic"],
                    format!("{}/status", config.mqtt.prefix)
                );
                assert!(availability[1]["topic"]
                    .as_str()
                    .unwrap()
                    .ends_with("/status"));
                assert!(p.get("expire_after").is_none());
            }
        }
    }
}

// ---------------------------------------------------------------------- config validation

fn load_err(text: &str) -> String {
    let path = repo().join("config/golden.toml");
    match config::load_str(&path, text) {
        Ok(_) => panic!("should not load:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn check_refuses_classes_home_assistant_would_refuse_and_clashing_entities() {
    let head = "[gateway]\nid = \"g\"\n[mqtt]\nurl = \"mqtt://localhost\"\n\
                [homeassistant]\nenabled = true\ndiscovery_prefix = \"ha/\"\n\
                [[bus]]\nname = \"b\"\ntype = \"modbus_tcp\"\naddress = \"h:502\"\n";
    let text = format!(
        "{head}[[device]]\nname = \"a_b\"\nbus = \"b\"\nunit = 1\n\
         [[device.point]]\nname = \"c\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\nunit = \"kWh\"\nha_state_class = \"measurement\"\n\
         [[device.point]]\nname = \"d\"\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\nunit = \"V\"\nha_device_class = \"power\"\n\
         [[device]]\nname = \"a\"\nbus = \"b\"\nunit = 2\n\
         [[device.point]]\nname = \"b_c\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\nwritable = true\nha_state_class = \"measurement\"\n"
    );
    let errors = load_err(&text);
    for expected in [
        "`discovery_prefix` = \"ha/\" has an empty topic level",
        "`ha_state_class` = \"measurement\" cannot go with device class \"energy\"",
        "`ha_device_class` = \"power\" takes a unit of mW, W, kW",
        "`ha_state_class` applies to numeric sensors only, and this point becomes a Home Assistant number",
    ] {
        assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
    }
    // Without the other errors, the clash is found.
    let text = format!(
        "{}[[device]]\nname = \"a_b\"\nbus = \"b\"\nunit = 1\n\
         [[device.point]]\nname = \"c\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n\
         [[device]]\nname = \"a\"\nbus = \"b\"\nunit = 2\n\
         [[device.point]]\nname = \"b.c\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n",
        head.replace("ha/", "ha")
    );
    let errors = load_err(&text);
    assert!(
        errors.contains("point \"b.c\" of device \"a\" and point \"c\" of device \"a_b\" would both be the Home Assistant entity \"a_b_c\""),
        "{errors}"
    );
    // The default `[mqtt] prefix` is fieldlink/g.
    let errors = load_err(&head.replace("ha/", "fieldlink"));
    assert!(
        errors.contains("`discovery_prefix` = \"fieldlink\" holds the gateway's own topics"),
        "{errors}"
    );
    // The clash only matters with discovery on.
    config::load_str(
        &repo().join("config/golden.toml"),
        &text.replace("enabled = true", "enabled = false"),
    )
    .unwrap();
}

#[test]
fn check_shows_the_entities_home_assistant_gets() {
    let config = config::load_str(
        &repo().join("config/golden.toml"),
        &profile_on_a_device("eastron-sdm120"),
    )
    .unwrap();
    let text = fieldlink::commands::describe(&config);
    for line in [
        "home assistant discovery: 17 configs under homeassistant/<component>/golden/ (retained, QoS 1), birth on homeassistant/status",
        "  device eastron-sdm120 (model \"SDM120-Modbus\")",
        "    sensor.eastron_sdm120_voltage (unit V, device_class voltage, state_class measurement)",
        "    sensor.eastron_sdm120_import_active_energy (unit kWh, device_class energy, state_class total_increasing)",
        "    sensor.eastron_sdm120_phase_angle (unit °, state_class measurement)",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
}

// ------------------------------------------------------------------- against a real broker

/// A meter with a voltage (f32 at holding 0) and an energy counter (u32 at input 10).
fn meter() -> SimDevice {
    let d = SimDevice::new(1);
    d.set_registers(Bank::Holding, 0, &words::f32(230.5))
        .set_registers(Bank::Input, 10, &words::u32(1234));
    d
}

const VOLTAGE: &str = r#"
[[device.point]]
name = "voltage"
table = "holding"
address = 0
type = "f32"
unit = "V"
ha_device_class = "voltage"
"#;

const ENERGY: &str = r#"
[[device.point]]
name = "energy"
table = "input"
address = 10
type = "u32"
unit = "Wh"
"#;

struct Setup {
    prefix: String,
    discovery_prefix: String,
    head: String,
    address: std::net::SocketAddr,
}

impl Setup {
    fn new(broker: &Broker, address: std::net::SocketAddr) -> Setup {
        let prefix = agent::prefix("ha");
        Setup {
            head: agent::head(broker.port, &prefix),
            prefix,
            discovery_prefix: unique("ha"),
            address,
        }
    }

    fn config(&self, enabled: bool, points: &[&str]) -> String {
        format!(
            "{}\n[homeassistant]\nenabled = {enabled}\ndiscovery_prefix = \"{}\"\n\n\
             [[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"{}\"\n\n\
             [[device]]\nname = \"m1\"\nbus = \"lan\"\nunit = 1\ninterval = \"1h\"\n{}",
            self.head,
            self.discovery_prefix,
            self.address,
            points.concat()
        )
    }

    /// The configs the agent must publish for `toml`, by topic.
    fn expected(&self, toml: &str) -> Vec<(String, serde_json::Value)> {
        let config = config::load_str(Path::new("/nonexistent/fieldlink.toml"), toml).unwrap();
        discovery_configs(&config)
            .into_iter()
            .map(|c| (c.topic, serde_json::from_slice(&c.payload).unwrap()))
            .collect()
    }
}

/// Publishes `payload` on `topic` (not retained, QoS 1) and waits for the PUBACK.
async fn publish(port: u16, topic: &str, payload: &str) {
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(unique("ha-pub"), "127.0.0.1", port), 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = events.poll().await {
                return;
            }
        }
    })
    .await
    .expect("PUBACK");
    let _ = client.disconnect().await;
}

/// What a subscriber arriving now gets retained under the discovery prefix: the broker
/// sends retained messages before a message published after the subscription, so a marker
/// published then closes the list.
async fn retained_now(broker: &Broker, setup: &Setup) -> Vec<(String, serde_json::Value)> {
    let late = Watch::start(broker.port, &format!("{}/#", setup.discovery_prefix)).await;
    let marker = format!("{}/marker", setup.discovery_prefix);
    publish(broker.port, &marker, "end").await;
    late.wait_for(&marker, DEADLINE, |_| true).await;
    late.snapshot()
        .into_iter()
        .filter(|m| m.retain)
        .map(|m| (m.topic.clone(), m.json()))
        .collect()
}

/// Waits until a late subscriber gets exactly `expected` retained under the prefix.
async fn retained_configs_are(
    broker: &Broker,
    setup: &Setup,
    expected: &[(String, serde_json::Value)],
) {
    let mut want = expected.to_vec();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let started = Instant::now();
    loop {
        let mut held = retained_now(broker, setup).await;
        held.sort_by(|a, b| a.0.cmp(&b.0));
        if held == want {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the broker holds {held:#?}\nnot {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_retained_and_put_back_after_home_assistants_birth_and_a_broker_restart() {
    let mut broker = Broker::start();
    let device = meter();
    let sim = serve_tcp(&[&device]).await;
    let setup = Setup::new(&broker, sim.addr);
    let toml = setup.config(true, &[VOLTAGE, ENERGY]);
    let expected = setup.expected(&toml);
    assert_eq!(
        expected.len(),
        3 + 2,
        "the gateway's three and one per point"
    );
    let watch =
        Watch::start_surviving_restarts(broker.port, &format!("{}/#", setup.discovery_prefix))
            .await;
    let mut agent = Agent::start(&toml);
    retained_configs_are(&broker, &setup, &expected).await;
    // The readings wait, retained, for Home Assistant to subscribe to them.
    let readings = Watch::start(broker.port, &format!("{}/m1/#", setup.prefix)).await;
    readings
        .wait_for(&format!("{}/m1/voltage", setup.prefix), DEADLINE, |m| {
            m.retain && m.json()["value"] == 230.5
        })
        .await;

    let count = |topic: &str| watch.on(topic).len();
    let voltage_topic = expected[3].0.clone();
    // Each went out once (seen on this subscriber's own connection, so waited for).
    wait_until("every config once", DEADLINE, || {
        expected
            .iter()
            .all(|(topic, _)| count(topic) == 1)
            .then_some(())
    })
    .await;
    let ha_status = format!("{}/status", setup.discovery_prefix);
    let born = Instant::now();
    publish(broker.port, &ha_status, "online").await;
    wait_until("every config again after the birth", DEADLINE, || {
        expected
            .iter()
            .all(|(topic, _)| count(topic) == 2)
            .then_some(())
    })
    .await;
    assert!(
        born.elapsed() >= BIRTH_SETTLE,
        "put back only after Home Assistant had time to listen"
    );
    assert!(watch
        .on(&voltage_topic)
        .iter()
        .all(|m| m.json() == expected[3].1));

    // A broker restarted without persistence lost them: back after the reconnect.
    broker.restart();
    retained_configs_are(&broker, &setup, &expected).await;
    agent.sigterm();
    assert!(agent.wait_exit(DEADLINE).await.success());
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_removed_from_the_map_loses_its_config_and_discovery_off_publishes_none() {
    let broker = Broker::start();
    let device = meter();
    let sim = serve_tcp(&[&device]).await;
    let setup = Setup::new(&broker, sim.addr);
    let both = setup.config(true, &[VOLTAGE, ENERGY]);
    let mut agent = Agent::start(&both);
    retained_configs_are(&broker, &setup, &setup.expected(&both)).await;
    agent.sigterm();
    assert!(agent.wait_exit(DEADLINE).await.success());

    // The energy point goes (and the voltage point becomes writable: a number now, so its
    // sensor config must go too).
    let fewer = setup.config(
        true,
        &[&VOLTAGE.replace("ha_device_class", "writable = true\nha_device_class")],
    );
    let expected = setup.expected(&fewer);
    assert!(expected.iter().any(|(t, _)| t.contains("/number/")));
    std::fs::write(&agent.config.path, &fewer).unwrap();
    let watch = Watch::start(broker.port, &format!("{}/#", setup.discovery_prefix)).await;
    agent.restart();
    retained_configs_are(&broker, &setup, &expected).await;
    // The clears reach this subscriber on its own connection: wait for them too.
    let cleared: Vec<String> = wait_until("both clears", DEADLINE, || {
        let cleared: Vec<String> = watch
            .snapshot()
            .into_iter()
            .filter(|m| m.payload.is_empty() && !m.retain)
            .map(|m| m.topic)
            .collect();
        (cleared.len() >= 2).then_some(cleared)
    })
    .await;
    assert_eq!(
        cleared.len(),
        2,
        "the energy sensor and the voltage sensor: {cleared:?}"
    );
    assert!(cleared
        .iter()
        .all(|t| t.contains("/sensor/") && (t.contains("m1_energy") || t.contains("m1_voltage"))));
    agent.sigterm();
    assert!(agent.wait_exit(DEADLINE).await.success());

    // The same map again: the broker holds every config as it is, so none is sent.
    let again = Watch::start(broker.port, &format!("{}/#", setup.discovery_prefix)).await;
    agent.restart();
    agent
        .wait_stderr("the discovery check", DEADLINE, |l| {
            l.contains("publishing 0 configs, 4 already on the broker")
        })
        .await;
    let sent: Vec<String> = again
        .snapshot()
        .into_iter()
        .filter(|m| !m.retain)
        .map(|m| m.topic)
        .collect();
    assert!(sent.is_empty(), "an unchanged map sent {sent:?}");
    agent.sigterm();
    assert!(agent.wait_exit(DEADLINE).await.success());

    // Off: the readings go out, and nothing under the discovery prefix does. What is there
    // stays: with discovery off the agent touches nothing under the prefix.
    let off = setup.config(false, &[VOLTAGE, ENERGY]);
    let everything = Watch::start(broker.port, "#").await;
    std::fs::write(&agent.config.path, &off).unwrap();
    agent.restart();
    everything
        .wait_for(&format!("{}/m1/energy", setup.prefix), DEADLINE, |m| {
            m.json()["boot"] == 4
        })
        .await;
    assert!(
        !agent.stderr.any(|l| l.contains("Home Assistant")),
        "discovery off still spoke of Home Assistant"
    );
    let published: Vec<String> = everything
        .snapshot()
        .into_iter()
        .filter(|m| !m.retain && m.topic.starts_with(&setup.discovery_prefix))
        .map(|m| m.topic)
        .collect();
    assert!(
        published.is_empty(),
        "discovery off published {published:?}"
    );
    agent.sigterm();
    assert!(agent.wait_exit(DEADLINE).await.success());
    drop(sim);
}
