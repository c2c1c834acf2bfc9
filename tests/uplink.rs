//! The uplink against a real mosquitto: readings arrive retained with their seq, the gateway
//! status follows the link, the health topic reports it, and shutdown says goodbye.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::time::Duration;

use fieldlink::config::PayloadMode;
use support::watch::Watch;
use support::{unique, wait_until, Broker};
use uplink_agent::{missing, mqtt, newest_per_topic, seqs, Agent};

const KA: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_with_their_seq_and_a_late_subscriber_gets_the_newest_retained() {
    let broker = Broker::start();
    let prefix = unique("fl/up");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(mqtt(broker.port, &prefix, KA));
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;

    for i in 0..30 {
        agent.reading(&format!("p{}", i % 3), i as f64);
    }
    let last = agent.last_seq();
    assert_eq!(last, 30);
    wait_until("all 30 readings upstream", DEADLINE, || {
        missing(&seqs(&watch.snapshot()), last)
            .is_empty()
            .then_some(())
    })
    .await;
    let m = watch.last_on(&format!("{prefix}/dev/p0")).unwrap();
    let json = m.json();
    assert_eq!(json["unit"], "V");
    assert!(json["ts"].as_u64().unwrap() > 1_600_000_000_000);

    wait_until("the outbox drained", DEADLINE, || {
        (agent.outbox.depth() == 0).then_some(())
    })
    .await;
    let late = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let retained = wait_until("retained readings of 3 points", DEADLINE, || {
        let r: Vec<_> = late
            .snapshot()
            .into_iter()
            .filter(|m| m.retain && m.topic.starts_with(&format!("{prefix}/dev/")))
            .collect();
        (r.len() == 3).then_some(r)
    })
    .await;
    assert_eq!(
        newest_per_topic(&retained),
        newest_per_topic(&watch.snapshot())
    );
    let status = late
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| m.retain)
        .await;
    assert_eq!(status.payload, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_availability_is_published_retained_as_plain_text() {
    let broker = Broker::start();
    let prefix = unique("fl/avail");
    let agent = Agent::start(mqtt(broker.port, &prefix, KA));
    agent.publisher_send_availability("dev", false);
    wait_until("the outbox drained", DEADLINE, || {
        (agent.is_up() && agent.outbox.depth() == 0).then_some(())
    })
    .await;
    let late = Watch::start(broker.port, &format!("{prefix}/dev/status")).await;
    let m = late
        .wait_for(&format!("{prefix}/dev/status"), DEADLINE, |m| m.retain)
        .await;
    assert_eq!(m.payload, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_payload_mode_sends_only_the_value() {
    let broker = Broker::start();
    let prefix = unique("fl/plain");
    let watch = Watch::start(broker.port, &format!("{prefix}/dev/#")).await;
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.payload = PayloadMode::Plain;
    let agent = Agent::start(cfg);
    agent.reading("v", 230.5);
    let m = watch
        .wait_for(&format!("{prefix}/dev/v"), DEADLINE, |_| true)
        .await;
    assert_eq!(m.payload, "230.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_readings_leave_the_outbox_once_written() {
    let broker = Broker::start();
    let prefix = unique("fl/q0");
    let watch = Watch::start(broker.port, &format!("{prefix}/dev/#")).await;
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.qos = 0;
    let agent = Agent::start(cfg);
    for i in 0..20 {
        agent.reading("v", i as f64);
    }
    wait_until("20 QoS 0 readings upstream", DEADLINE, || {
        missing(&seqs(&watch.snapshot()), 20)
            .is_empty()
            .then_some(())
    })
    .await;
    wait_until("the outbox drained", DEADLINE, || {
        (agent.outbox.depth() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_topic_reports_the_link_retained() {
    let broker = Broker::start();
    let prefix = unique("fl/health");
    let watch = Watch::start(broker.port, &format!("{prefix}/health")).await;
    let _agent = Agent::start(mqtt(broker.port, &prefix, KA));
    watch
        .wait_for(&format!("{prefix}/health"), DEADLINE, |_| true)
        .await;
    let late = Watch::start(broker.port, &format!("{prefix}/health")).await;
    let m = late
        .wait_for(&format!("{prefix}/health"), DEADLINE, |m| m.retain)
        .await;
    let json = m.json();
    assert_eq!(json["link"], "up");
    assert_eq!(json["reconnects"], 0);
    assert_eq!(json["dropped"], 0);
    assert!(json.get("outbox_depth").is_some());
    assert!(json.get("last_error").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_what_is_queued_then_offline_and_returns() {
    let broker = Broker::start();
    let prefix = unique("fl/bye");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(mqtt(broker.port, &prefix, KA));
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;
    for i in 0..500 {
        agent.reading(&format!("p{}", i % 5), i as f64);
    }
    agent.shutdown.cancel();
    let started = std::time::Instant::now();
    wait_until("uplink::run returned", Duration::from_secs(5), || {
        agent.task.is_finished().then_some(())
    })
    .await;
    eprintln!("uplink returned {:?} after cancel", started.elapsed());
    let status = watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "offline"
        })
        .await;
    assert_eq!(status.payload, "offline");
    let all = watch.snapshot();
    assert_eq!(missing(&seqs(&all), 500), Vec::<u64>::new());
    // The goodbye comes after the last reading.
    let offline_at = all.iter().position(|m| m.payload == "offline").unwrap();
    assert!(all[offline_at..].iter().all(|m| !m.topic.contains("/dev/")));
    let late = Watch::start(broker.port, &format!("{prefix}/status")).await;
    let retained = late
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| m.retain)
        .await;
    assert_eq!(retained.payload, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_broker_is_unreachable_returns_at_once() {
    let prefix = unique("fl/nobroker");
    let agent = Agent::start(mqtt(support::free_port(), &prefix, KA));
    wait_until("a failed connect", DEADLINE, || agent.link().last_error).await;
    agent.shutdown.cancel();
    wait_until("uplink::run returned", Duration::from_secs(1), || {
        agent.task.is_finished().then_some(())
    })
    .await;
}
