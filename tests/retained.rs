//! Issue 10 item 3: retained state survives a broker that forgot it.
//!
//! A real mosquitto restarted without persistence loses every retained message; with report
//! by exception on, nothing would bring device status, `meta` or a steady point's value back
//! before `max_interval`. After the reconnect a late subscriber must get every retained topic
//! it got before, in every payload mode, without waiting for a poll; a broker that kept them
//! (restarted with persistence) must get nothing more than the check itself.
//!
//! The in-process uplink tests feed no reading at all after the restart, so whatever comes
//! back can only be the agent's republish; the agent-binary tests poll a real Modbus device
//! every hour, so "within one poll interval" means before any second poll.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fieldlink::config::{Deadband, PayloadMode, ReportByException};
use fieldlink::model::{Reading, Sample, SampleSink, Value};
use support::agent::{self, ConfigDir};
use support::broker::Options;
use support::modbus::{serve_tcp, words, Bank, SimDevice};
use support::proxy::{Mode, Proxy};
use support::watch::{Message, Watch};
use support::{unique, wait_until, Broker};
use uplink_agent::{mqtt, Agent};

const KA: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(20);

/// A broker behind the fault proxy, an in-process agent with report by exception on, and a
/// subscriber that has seen everything since the start.
struct Rig {
    broker: Broker,
    proxy: Proxy,
    agent: Agent,
    watch: Watch,
    prefix: String,
}

impl Rig {
    async fn start(name: &str, payload: PayloadMode, broker: Options) -> Rig {
        let broker = Broker::start_with(broker);
        let proxy = Proxy::start(broker.port).await;
        let prefix = unique(name);
        let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
        let mut cfg = mqtt(proxy.port, &prefix, KA);
        cfg.payload = payload;
        cfg.report = Some(ReportByException {
            deadband: Deadband::Absolute(0.5),
            max_interval: Duration::from_secs(3600),
        });
        let agent = Agent::start(cfg);
        watch
            .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
                m.payload == "online"
            })
            .await;
        Rig {
            broker,
            proxy,
            agent,
            watch,
            prefix,
        }
    }

    fn send(&self, sample: Sample) {
        self.agent.publisher.send(sample);
    }

    /// Two devices: `meter` online with three points polled twice (units, so device mode
    /// has a `meta`), `pump` offline.
    fn feed(&self) {
        let device = |d: &str| Arc::<str>::from(d);
        self.send(Sample::DeviceAvailability {
            device: device("meter"),
            online: true,
        });
        for (poll, ts) in [(0.0, 1_800_000_000_000u64), (10.0, 1_800_000_001_000)] {
            for (point, unit, value) in [
                ("voltage", Some("V"), 230.0),
                ("current", Some("A"), 5.0),
                ("count", None, 7.0),
            ] {
                self.send(Sample::Reading(Reading {
                    device: device("meter"),
                    point: Arc::from(point),
                    value: Ok(Value::Float(value + poll)),
                    unit: unit.map(Arc::from),
                    ts_ms: ts,
                }));
            }
            self.send(Sample::PollDone {
                device: device("meter"),
            });
        }
        self.send(Sample::DeviceAvailability {
            device: device("pump"),
            online: false,
        });
    }

    /// Waits until the broker acknowledged everything; returns the newest payload of every
    /// topic under the prefix except the gateway's own status and health.
    async fn delivered(&self) -> BTreeMap<String, String> {
        wait_until("the outbox drained", DEADLINE, || {
            (self.agent.outbox.depth() == 0).then_some(())
        })
        .await;
        // The retained status, read back, proves every earlier publish reached subscribers.
        let own = [
            format!("{}/status", self.prefix),
            format!("{}/health", self.prefix),
        ];
        let late = Watch::start(self.broker.port, &format!("{}/#", self.prefix)).await;
        late.wait_for(&own[0], DEADLINE, |m| m.retain).await;
        let newest = newest(&self.watch.snapshot(), &own);
        late.stop().await;
        newest
    }

    /// The broker restarts while the agent is held off, then a subscriber is in place on the
    /// new broker before the agent comes back; returns that subscriber and the bytes the
    /// agent had sent through the proxy before it came back.
    async fn broker_restarts(&mut self, cleanly: bool) -> (Watch, u64) {
        self.proxy.set(Mode::Refuse);
        self.proxy.reset_all();
        wait_until("the link declared down", DEADLINE, || {
            (!self.agent.is_up()).then_some(())
        })
        .await;
        if cleanly {
            self.broker.restart_cleanly();
        } else {
            self.broker.restart();
        }
        let second = Watch::start(self.broker.port, &format!("{}/#", self.prefix)).await;
        let bytes_before = self.proxy.bytes_up();
        self.proxy.set(Mode::Pass);
        wait_until("reconnected, and the broker checked", DEADLINE, || {
            let link = self.agent.link();
            (link.state == fieldlink::health::LinkState::Up
                && link.reconnects >= 1
                && link.routing == "ok")
                .then_some(())
        })
        .await;
        (second, bytes_before)
    }
}

/// The newest payload per topic (latest arrival wins), leaving out `except`.
fn newest(messages: &[Message], except: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in messages {
        if !except.contains(&m.topic) {
            out.insert(m.topic.clone(), m.payload.clone());
        }
    }
    out
}

async fn a_broker_that_forgot_everything_gets_it_all_back(name: &str, payload: PayloadMode) {
    let mut rig = Rig::start(name, payload, Options::default()).await;
    rig.feed();
    let before = rig.delivered().await;
    let expected_topics: Vec<&str> = match payload {
        PayloadMode::Device | PayloadMode::Compact => {
            vec!["meter", "meter/meta", "meter/status", "pump/status"]
        }
        _ => vec![
            "meter/count",
            "meter/current",
            "meter/status",
            "meter/voltage",
            "pump/status",
        ],
    };
    let topics: Vec<String> = before
        .keys()
        .map(|t| {
            t.trim_start_matches(&format!("{}/", rig.prefix))
                .to_string()
        })
        .collect();
    assert_eq!(topics, expected_topics, "what the agent published");

    let (second, _) = rig.broker_restarts(false).await;
    // No reading is fed from here on: what comes back is the agent's republish.
    wait_until(
        "every retained topic republished to the new broker",
        DEADLINE,
        || {
            let got = newest(&second.snapshot(), &[]);
            before.keys().all(|t| got.contains_key(t)).then_some(())
        },
    )
    .await;
    let late = Watch::start(rig.broker.port, &format!("{}/#", rig.prefix)).await;
    let retained = wait_until("a late subscriber's retained messages", DEADLINE, || {
        let r: Vec<Message> = late.snapshot().into_iter().filter(|m| m.retain).collect();
        let got = newest(&r, &[]);
        before.keys().all(|t| got.contains_key(t)).then_some(got)
    })
    .await;
    for (topic, payload) in &before {
        assert_eq!(
            retained.get(topic),
            Some(payload),
            "{topic}: the late subscriber must get what it got before the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_without_persistence_a_late_subscriber_gets_every_retained_topic_back_in_json_mode(
) {
    a_broker_that_forgot_everything_gets_it_all_back("fl/rp-json", PayloadMode::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_without_persistence_a_late_subscriber_gets_every_retained_topic_back_in_device_mode(
) {
    a_broker_that_forgot_everything_gets_it_all_back("fl/rp-dev", PayloadMode::Device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_without_persistence_a_late_subscriber_gets_every_retained_topic_back_in_compact_mode(
) {
    // The meta above all: without it the compact array cannot be read.
    a_broker_that_forgot_everything_gets_it_all_back("fl/rp-compact", PayloadMode::Compact).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_without_persistence_a_late_subscriber_gets_every_retained_topic_back_in_plain_mode(
) {
    a_broker_that_forgot_everything_gets_it_all_back("fl/rp-plain", PayloadMode::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_republish_does_not_wait_behind_a_backlog() {
    let mut rig = Rig::start("fl/rp-backlog", PayloadMode::Json, Options::default()).await;
    rig.feed();
    let before = rig.delivered().await;
    // The broker restarts during an outage in which 20 000 readings pile up.
    rig.proxy.set(Mode::Refuse);
    rig.proxy.reset_all();
    wait_until("the link declared down", DEADLINE, || {
        (!rig.agent.is_up()).then_some(())
    })
    .await;
    rig.broker.restart();
    for i in 0..20_000u64 {
        rig.send(Sample::Reading(Reading {
            device: Arc::from("log"),
            point: Arc::from(format!("p{}", i % 10)),
            value: Ok(Value::Float(i as f64)),
            unit: None,
            ts_ms: 1_800_000_000_000 + i,
        }));
    }
    let second = Watch::start(rig.broker.port, &format!("{}/#", rig.prefix)).await;
    rig.proxy.set(Mode::Pass);
    let pump = format!("{}/pump/status", rig.prefix);
    second.wait_for(&pump, DEADLINE, |_| true).await;
    let all = second.snapshot();
    let at = all.iter().position(|m| m.topic == pump).unwrap();
    let backlog_before = all[..at]
        .iter()
        .filter(|m| m.topic.contains("/log/"))
        .count();
    eprintln!("republished device status after {backlog_before} of 20000 backlog readings");
    // At most two send windows (512 each, src/uplink/mqtt.rs) of backlog records left
    // before the broker's answer came: not the 20 000 behind them.
    assert!(
        backlog_before <= 1024,
        "the republish waited behind {backlog_before} backlog readings"
    );
    wait_until("every retained topic republished", DEADLINE, || {
        let got = newest(&second.snapshot(), &[]);
        before
            .iter()
            .all(|(t, p)| got.get(t) == Some(p))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_with_persistence_gets_no_republish() {
    let persistent = Options {
        persistence: true,
        ..Options::default()
    };
    let mut rig = Rig::start("fl/rp-kept", PayloadMode::Json, persistent).await;
    rig.feed();
    let before = rig.delivered().await;
    let (second, bytes_before) = rig.broker_restarts(true).await;
    let sent = rig.proxy.bytes_up() - bytes_before;
    // The routing verdict came with the check: a republish would have been handed to the
    // client in the same turn, before anything the test publishes now.
    rig.agent.publisher.send(Sample::Reading(Reading {
        device: Arc::from("meter"),
        point: Arc::from("marker"),
        value: Ok(Value::Bool(true)),
        unit: None,
        ts_ms: fieldlink::model::unix_ms_now(),
    }));
    let marker = format!("{}/meter/marker", rig.prefix);
    second.wait_for(&marker, DEADLINE, |_| true).await;
    let all = second.snapshot();
    // The subscriber got the kept state retained when it subscribed; anything live on a
    // device topic before the marker would be a republish.
    let kept = newest(
        &all.iter().filter(|m| m.retain).cloned().collect::<Vec<_>>(),
        &[],
    );
    for (topic, payload) in &before {
        assert_eq!(kept.get(topic), Some(payload), "{topic} kept by the broker");
    }
    let republished: Vec<&Message> = all
        .iter()
        .filter(|m| !m.retain && before.contains_key(&m.topic))
        .collect();
    assert!(
        republished.is_empty(),
        "a broker that kept our state got a republish: {republished:?}"
    );
    eprintln!(
        "bytes sent to a broker that kept our retained state, from CONNECT to the verdict: {sent}"
    );
}

// ------------------------------------------------------------------ the agent binary

/// One Modbus TCP meter with three points polled every hour: after the first poll nothing
/// is read again during a test.
async fn meter_device() -> (SimDevice, support::modbus::TcpSim) {
    let meter = SimDevice::new(1);
    meter
        .set_registers(Bank::Holding, 0, &[0; 8])
        .set_registers(Bank::Holding, 0, &words::f32(230.5))
        .set_registers(Bank::Holding, 2, &words::f32(4.25))
        .set_registers(Bank::Holding, 4, &[7]);
    let sim = serve_tcp(&[&meter]).await;
    (meter, sim)
}

fn agent_config(broker_port: u16, modbus: &str, prefix: &str, payload: &str) -> String {
    format!(
        r#"{head}backoff_initial = "100ms"
backoff_max = "500ms"
payload = "{payload}"
deadband = 0.5
max_interval = "2h"

[[bus]]
name = "lan"
type = "modbus_tcp"
address = "{modbus}"
timeout = "1s"

[[device]]
name = "meter"
bus = "lan"
unit = 1
interval = "1h"

[[device.point]]
name = "voltage"
table = "holding"
address = 0
type = "f32"
unit = "V"

[[device.point]]
name = "current"
table = "holding"
address = 2
type = "f32"
unit = "A"

[[device.point]]
name = "count"
table = "holding"
address = 4
type = "u16"
"#,
        head = agent::head(broker_port, prefix)
    )
}

/// What a late subscriber must find retained under `prefix` in `payload` mode.
fn expected_retained(prefix: &str, payload: &str) -> Vec<String> {
    let topics: &[&str] = if payload == "device" {
        &["status", "meter/status", "meter", "meter/meta"]
    } else {
        &[
            "status",
            "meter/status",
            "meter/voltage",
            "meter/current",
            "meter/count",
        ]
    };
    topics.iter().map(|t| format!("{prefix}/{t}")).collect()
}

/// Waits until every one of `topics` arrived at `watch` (retained or live).
async fn arrived(watch: &Watch, topics: &[String]) {
    wait_until(&format!("{topics:?} published"), DEADLINE, || {
        let got = newest(&watch.snapshot(), &[]);
        topics.iter().all(|t| got.contains_key(t)).then_some(())
    })
    .await;
}

/// Once every one of `topics` was published, what a subscriber that comes after gets
/// retained under `prefix`.
async fn retained_under(port: u16, prefix: &str, topics: &[String]) -> BTreeMap<String, String> {
    let watch = Watch::start(port, &format!("{prefix}/#")).await;
    arrived(&watch, topics).await;
    let late = Watch::start(port, &format!("{prefix}/#")).await;
    wait_until(
        &format!("a late subscriber gets {topics:?} retained"),
        DEADLINE,
        || {
            let got = newest(
                &late
                    .snapshot()
                    .into_iter()
                    .filter(|m| m.retain)
                    .collect::<Vec<_>>(),
                &[],
            );
            topics.iter().all(|t| got.contains_key(t)).then_some(got)
        },
    )
    .await
}

async fn the_agent_republishes_to_a_broker_that_forgot(payload: &str) {
    let (meter, sim) = meter_device().await;
    let mut broker = Broker::start();
    let prefix = agent::prefix(&format!("rp-bin-{payload}"));
    let topics = expected_retained(&prefix, payload);
    let agent = agent::Agent::start_with(
        ConfigDir::new(&agent_config(broker.port, &sim.address(), &prefix, payload)),
        &[],
    );
    let before = retained_under(broker.port, &prefix, &topics).await;
    assert_eq!(meter.requests(), 1, "one poll so far");

    broker.restart();
    let after = retained_under(broker.port, &prefix, &topics).await;
    for topic in &topics[1..] {
        assert_eq!(after.get(topic), before.get(topic), "{topic}");
    }
    assert_eq!(
        meter.requests(),
        1,
        "no second poll: it came from the republish"
    );
    agent
        .wait_stderr("the republish logged", DEADLINE, |l| {
            l.contains("INFO") && l.contains("none of our retained messages")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_puts_device_status_and_every_point_back_before_the_next_poll_in_json_mode() {
    the_agent_republishes_to_a_broker_that_forgot("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_puts_device_status_meta_and_the_batch_back_before_the_next_poll_in_device_mode()
{
    the_agent_republishes_to_a_broker_that_forgot("device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_agent_restart_its_first_poll_puts_everything_back_on_a_broker_that_forgot() {
    let (meter, sim) = meter_device().await;
    let mut broker = Broker::start();
    let prefix = agent::prefix("rp-agent-restart");
    let topics = expected_retained(&prefix, "device");
    let mut agent = agent::Agent::start_with(
        ConfigDir::new(&agent_config(
            broker.port,
            &sim.address(),
            &prefix,
            "device",
        )),
        &[],
    );
    let before = retained_under(broker.port, &prefix, &topics).await;
    agent.sigterm();
    assert!(agent.wait_exit(DEADLINE).await.success());
    broker.restart();
    agent.restart();
    let after = retained_under(broker.port, &prefix, &topics).await;
    for topic in &topics {
        let (a, b) = (after.get(topic), before.get(topic));
        if topic.ends_with("/meter") {
            // A new poll: same values, a new ts and seq.
            let values = |p: Option<&String>| {
                serde_json::from_str::<serde_json::Value>(p.unwrap()).unwrap()["values"].clone()
            };
            assert_eq!(values(a), values(b), "{topic}");
        } else {
            assert_eq!(a, b, "{topic}");
        }
    }
    assert_eq!(
        meter.requests(),
        2,
        "one poll per run: the first one did it"
    );
}
