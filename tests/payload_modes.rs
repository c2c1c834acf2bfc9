//! The cellular-economy payload modes against a real mosquitto: device-batched messages
//! (`payload = "device"`) and report by exception (`deadband`, `max_interval`).
//!
//! Readings are fed to the real `Publisher` with chosen timestamps, so the heartbeat is
//! exercised without waiting for it; the uplink and the broker are real.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::sync::Arc;
use std::time::Duration;

use fieldlink::config::{Deadband, PayloadMode, ReportByException};
use fieldlink::model::{Quality, Reading, Sample, SampleSink, Value};
use support::watch::Watch;
use support::{unique, wait_until, Broker};
use uplink_agent::{mqtt, Agent};

const KA: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(15);
const T0: u64 = 1_800_000_000_000;

fn reading(device: &str, point: &str, value: Value, unit: Option<&str>, ts_ms: u64) -> Sample {
    bad_or_good(device, point, Ok(value), unit, ts_ms)
}

fn bad_or_good(
    device: &str,
    point: &str,
    value: Result<Value, Quality>,
    unit: Option<&str>,
    ts_ms: u64,
) -> Sample {
    Sample::Reading(Reading {
        device: Arc::from(device),
        point: Arc::from(point),
        value,
        unit: unit.map(Arc::from),
        ts_ms,
    })
}

fn poll_done(device: &str) -> Sample {
    Sample::PollDone {
        device: Arc::from(device),
    }
}

async fn online(broker: &Broker, prefix: &str, cfg: fieldlink::config::Mqtt) -> (Watch, Agent) {
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(cfg);
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;
    (watch, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_mode_sends_one_retained_message_per_poll_holding_every_point_and_units_once() {
    let broker = Broker::start();
    let prefix = unique("fl/dev");
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.payload = PayloadMode::Device;
    let (watch, agent) = online(&broker, &prefix, cfg).await;

    for poll in 0..3u64 {
        let ts = T0 + poll * 1000;
        agent.publisher.send(reading(
            "meter",
            "voltage",
            Value::Float(230.0 + poll as f64),
            Some("V"),
            ts,
        ));
        agent
            .publisher
            .send(reading("meter", "count", Value::Int(7), None, ts));
        agent.publisher.send(reading(
            "meter",
            "bad",
            Value::Float(f64::NAN),
            Some("A"),
            ts + 1,
        ));
        agent.publisher.send(poll_done("meter"));
    }
    let device_topic = format!("{prefix}/meter");
    let batches = wait_until("three device messages", DEADLINE, || {
        let on = watch.on(&device_topic);
        (on.len() == 3).then_some(on)
    })
    .await;
    let last = batches[2].json();
    assert_eq!(last["ts"], T0 + 2001);
    assert_eq!(last["values"]["voltage"], 232.0);
    assert_eq!(last["values"]["count"], 7);
    assert_eq!(last["values"]["bad"], serde_json::Value::Null);
    assert_eq!(last["quality"]["bad"], "nan");
    let seqs: Vec<u64> = batches
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        [1, 2, 3],
        "one seq per device message, none taken by the meta message"
    );
    assert!(batches.iter().all(|m| m.json()["boot"] == 1));
    // No per-point topics in device mode.
    assert!(watch.on(&format!("{prefix}/meter/voltage")).is_empty());

    let meta = watch.on(&format!("{prefix}/meter/meta"));
    assert_eq!(meta.len(), 1, "units are announced once: {meta:?}");
    assert_eq!(
        meta[0].json(),
        serde_json::json!({"units":{"bad":"A","voltage":"V"}})
    );

    wait_until("the outbox drained", DEADLINE, || {
        (agent.outbox.depth() == 0).then_some(())
    })
    .await;
    let late = Watch::start(broker.port, &format!("{prefix}/meter/#")).await;
    let late_batch = Watch::start(broker.port, &device_topic).await;
    let retained = wait_until("the retained batch", DEADLINE, || {
        late_batch.last_on(&device_topic).filter(|m| m.retain)
    })
    .await;
    assert_eq!(retained.json()["values"]["voltage"], 232.0);
    wait_until("the retained meta", DEADLINE, || {
        late.last_on(&format!("{prefix}/meter/meta"))
            .filter(|m| m.retain)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadband_suppresses_small_changes_and_max_interval_re_sends_a_steady_value() {
    let broker = Broker::start();
    let prefix = unique("fl/rbe");
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.report = Some(ReportByException {
        deadband: Deadband::Absolute(0.5),
        max_interval: Duration::from_secs(60),
    });
    let (watch, agent) = online(&broker, &prefix, cfg).await;

    // (value, seconds after T0): published are the first, the jump past 0.5 from the last
    // *published* 10.0 (at 3 s), and the steady 10.6 once 60 s passed since then (63 s).
    let series = [
        (10.0, 0),
        (10.2, 1),
        (10.4, 2),
        (10.6, 3),
        (10.6, 30),
        (10.6, 62),
        (10.6, 63),
        (10.6, 64),
    ];
    for (value, s) in series {
        agent.publisher.send(reading(
            "meter",
            "voltage",
            Value::Float(value),
            Some("V"),
            T0 + s * 1000,
        ));
    }
    // A marker after the series: once it arrives, everything before it has been published.
    agent
        .publisher
        .send(reading("meter", "marker", Value::Bool(true), None, T0));
    watch
        .wait_for(&format!("{prefix}/meter/marker"), DEADLINE, |_| true)
        .await;
    let sent: Vec<(f64, u64)> = watch
        .on(&format!("{prefix}/meter/voltage"))
        .iter()
        .map(|m| {
            let j = m.json();
            (j["value"].as_f64().unwrap(), j["ts"].as_u64().unwrap() - T0)
        })
        .collect();
    assert_eq!(sent, [(10.0, 0), (10.6, 3000), (10.6, 63_000)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_deadband_device_mode_batches_only_the_points_that_moved() {
    let broker = Broker::start();
    let prefix = unique("fl/devrbe");
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.payload = PayloadMode::Device;
    cfg.report = Some(ReportByException {
        deadband: Deadband::Percent(1.0),
        max_interval: Duration::from_secs(300),
    });
    let (watch, agent) = online(&broker, &prefix, cfg).await;

    let polls = [(100.0, 50.0), (100.5, 52.0), (100.6, 52.1), (102.0, 52.2)];
    for (i, (a, b)) in polls.into_iter().enumerate() {
        let ts = T0 + i as u64 * 1000;
        agent
            .publisher
            .send(reading("m", "a", Value::Float(a), None, ts));
        agent
            .publisher
            .send(reading("m", "b", Value::Float(b), None, ts));
        agent.publisher.send(poll_done("m"));
    }
    // Poll 3 moved nothing past 1 %: no message for it.
    let batches = wait_until("three batches", DEADLINE, || {
        let on = watch.on(&format!("{prefix}/m"));
        (on.len() == 3).then_some(on)
    })
    .await;
    let values: Vec<serde_json::Value> =
        batches.iter().map(|m| m.json()["values"].clone()).collect();
    assert_eq!(
        values,
        [
            serde_json::json!({"a":100.0,"b":50.0}),
            serde_json::json!({"b":52.0}),
            serde_json::json!({"a":102.0}),
        ]
    );
}

/// Issue 10 item 2: with report by exception, a point turning bad, changing cause, and coming
/// back (to the very value it had) is each published; a repeat of the same bad cause is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_by_exception_publishes_every_change_of_quality_and_only_those() {
    let broker = Broker::start();
    let prefix = unique("fl/rbe-quality");
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.report = Some(ReportByException {
        deadband: Deadband::Absolute(5.0),
        max_interval: Duration::from_secs(60),
    });
    let (watch, agent) = online(&broker, &prefix, cfg).await;
    let series = [
        Ok(Value::Float(10.0)),
        Err(Quality::Timeout),
        Err(Quality::Timeout),
        Err(Quality::Exception(2)),
        Ok(Value::Float(10.0)),
        Ok(Value::Float(11.0)),
    ];
    for (i, value) in series.into_iter().enumerate() {
        agent.publisher.send(bad_or_good(
            "meter",
            "v",
            value,
            Some("V"),
            T0 + i as u64 * 1000,
        ));
    }
    agent
        .publisher
        .send(reading("meter", "marker", Value::Bool(true), None, T0));
    watch
        .wait_for(&format!("{prefix}/meter/marker"), DEADLINE, |_| true)
        .await;
    let sent: Vec<(serde_json::Value, serde_json::Value)> = watch
        .on(&format!("{prefix}/meter/v"))
        .iter()
        .map(|m| {
            let j = m.json();
            (j["value"].clone(), j["quality"].clone())
        })
        .collect();
    use serde_json::{json, Value::Null};
    assert_eq!(
        sent,
        [
            (json!(10.0), Null),
            (Null, json!("timeout")),
            (Null, json!("exception:2")),
            (json!(10.0), Null),
        ]
    );
}

/// Issue 10 items 2 and 7: plain mode publishes nothing for a bad point or an empty string
/// (a zero-length retained message would delete the retained value); the next good reading
/// goes out as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_publishes_nothing_for_a_bad_point_or_an_empty_string() {
    let broker = Broker::start();
    let prefix = unique("fl/plain-bad");
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.payload = PayloadMode::Plain;
    let (watch, agent) = online(&broker, &prefix, cfg).await;
    agent
        .publisher
        .send(reading("m", "s", Value::Text("ok".into()), None, T0));
    agent
        .publisher
        .send(bad_or_good("m", "s", Err(Quality::Timeout), None, T0 + 1));
    agent
        .publisher
        .send(reading("m", "s", Value::Text(String::new()), None, T0 + 2));
    agent
        .publisher
        .send(reading("m", "s", Value::Text("back".into()), None, T0 + 3));
    watch
        .wait_for(&format!("{prefix}/m/s"), DEADLINE, |m| m.payload == "back")
        .await;
    let payloads: Vec<String> = watch
        .on(&format!("{prefix}/m/s"))
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(payloads, ["ok", "back"]);
}
