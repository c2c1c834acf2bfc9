//! The uplink against a real mosquitto: readings arrive retained with their seq, the gateway
//! status follows the link, the health topic reports it, and shutdown says goodbye.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::mount::Mount;

use fieldlink::buffer::Outbox;
use fieldlink::config::{Durability, Mqtt, PayloadMode};
use fieldlink::poll::serial_line;
use support::watch::Watch;
use support::{unique, wait_until, Broker};
use uplink_agent::{
    all_arrived, buffered_outbox, missing, mqtt, newest_per_topic, retained_on, seqs, Agent,
};

const KA: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(15);

/// A fresh broker, a unique prefix, a subscriber to `<prefix>/<filter>` that is in place
/// before the agent starts, and the agent.
struct Rig {
    broker: Broker,
    prefix: String,
    watch: Watch,
    agent: Agent,
}

impl Rig {
    /// The agent over a memory outbox, its settings changed by `tweak` first.
    async fn start(name: &str, filter: &str, tweak: impl FnOnce(&mut Mqtt)) -> Rig {
        Rig::launch(name, filter, tweak, None).await
    }

    /// The agent over `outbox` (e.g. one with a durable buffer).
    async fn with_outbox(name: &str, filter: &str, outbox: Arc<Outbox>) -> Rig {
        Rig::launch(name, filter, |_| {}, Some(outbox)).await
    }

    async fn launch(
        name: &str,
        filter: &str,
        tweak: impl FnOnce(&mut Mqtt),
        outbox: Option<Arc<Outbox>>,
    ) -> Rig {
        let broker = Broker::start();
        let prefix = unique(name);
        let watch = Watch::start(broker.port, &format!("{prefix}/{filter}")).await;
        let mut cfg = mqtt(broker.port, &prefix, KA);
        tweak(&mut cfg);
        let agent = match outbox {
            Some(outbox) => Agent::start_with_outbox(cfg, outbox),
            None => Agent::start(cfg),
        };
        Rig {
            broker,
            prefix,
            watch,
            agent,
        }
    }

    /// `<prefix>/<under>`.
    fn topic(&self, under: &str) -> String {
        format!("{}/{under}", self.prefix)
    }

    /// The first message on `<prefix>/<under>` that the watch saw, waiting for it.
    async fn first_on(&self, under: &str) -> support::watch::Message {
        self.watch
            .wait_for(&self.topic(under), DEADLINE, |_| true)
            .await
    }

    async fn wait_online(&self) {
        self.watch
            .wait_for(&self.topic("status"), DEADLINE, |m| m.payload == "online")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_with_their_seq_and_a_late_subscriber_gets_the_newest_retained() {
    let rig = Rig::start("fl/up", "#", |_| {}).await;
    rig.wait_online().await;

    for i in 0..30 {
        rig.agent.reading(&format!("p{}", i % 3), i as f64);
    }
    let last = rig.agent.last_seq();
    assert_eq!(last, 30);
    all_arrived(last, DEADLINE, || seqs(&rig.watch.snapshot())).await;
    let m = rig.watch.last_on(&rig.topic("dev/p0")).unwrap();
    let json = m.json();
    assert_eq!(json["unit"], "V");
    assert!(json["ts"].as_u64().unwrap() > 1_600_000_000_000);

    rig.agent.drained(DEADLINE).await;
    let late = Watch::start(rig.broker.port, &rig.topic("#")).await;
    let retained = wait_until("retained readings of 3 points", DEADLINE, || {
        let r: Vec<_> = late
            .snapshot()
            .into_iter()
            .filter(|m| m.retain && m.topic.starts_with(&rig.topic("dev/")))
            .collect();
        (r.len() == 3).then_some(r)
    })
    .await;
    assert_eq!(
        newest_per_topic(&retained),
        newest_per_topic(&rig.watch.snapshot())
    );
    let status = late
        .wait_for(&rig.topic("status"), DEADLINE, |m| m.retain)
        .await;
    assert_eq!(status.payload, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_availability_is_published_retained_as_plain_text() {
    let rig = Rig::start("fl/avail", "dev/status", |_| {}).await;
    rig.agent.publisher_send_availability("dev", false);
    rig.agent.drained(DEADLINE).await;
    let m = retained_on(rig.broker.port, &rig.topic("dev/status"), DEADLINE).await;
    assert_eq!(m.payload, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_payload_mode_sends_only_the_value() {
    let rig = Rig::start("fl/plain", "dev/#", |cfg| cfg.payload = PayloadMode::Plain).await;
    rig.agent.reading("v", 230.5);
    assert_eq!(rig.first_on("dev/v").await.payload, "230.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_readings_leave_the_outbox_once_written() {
    let rig = Rig::start("fl/q0", "dev/#", |cfg| cfg.qos = 0).await;
    for i in 0..20 {
        rig.agent.reading("v", i as f64);
    }
    all_arrived(20, DEADLINE, || seqs(&rig.watch.snapshot())).await;
    rig.agent.drained(DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_topic_reports_the_link_retained() {
    let rig = Rig::start("fl/health", "health", |_| {}).await;
    rig.first_on("health").await;
    let json = retained_on(rig.broker.port, &rig.topic("health"), DEADLINE)
        .await
        .json();
    assert_eq!(json["link"], "up");
    // Null and zero fields are left out of the message (absent means null or 0), except the
    // two that Home Assistant's gateway sensors read.
    assert!(json.get("reconnects").is_none(), "{json}");
    assert!(json.get("last_error").is_none(), "{json}");
    assert_eq!(json["dropped"], 0);
    assert_eq!(json["outbox_depth"], 0);
    assert!(json["ts"].is_u64(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_topic_carries_the_buffer_status_and_the_serial_line_counters() {
    let bus = unique("health-gps");
    let counters = serial_line::counters(&bus);
    counters.garbage.fetch_add(3, Ordering::Relaxed);
    counters.bad_checksum.fetch_add(2, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let outbox = buffered_outbox(dir.path(), Durability::Outage);
    let rig = Rig::with_outbox("fl/health-sections", "health", outbox).await;
    let json = rig.first_on("health").await.json();
    assert_eq!(json["link"], "up");
    let buffer = &json["buffer"];
    // A healthy empty buffer: its null and zero fields are left out.
    for key in [
        "disk_error",
        "memory_depth",
        "disk_depth",
        "dropped",
        "recovery",
    ] {
        assert!(buffer.get(key).is_none(), "buffer.{key} in {json}");
    }
    assert!(buffer["boot"].is_u64(), "{json}");
    let line = &json["serial_line"][&bus];
    assert_eq!(line["garbage"], 3, "{json}");
    assert_eq!(line["bad_checksum"], 2, "{json}");
    assert_eq!(line["overlong"], 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_buffer_directory_shows_as_a_disk_error_in_the_health_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("state");
    let mount = Mount::tmpfs(&at, "size=1m");
    match &mount {
        Some(m) => m.remount("ro"),
        None => {
            // Not root: permissions make the directory read-only. (Root without mount
            // rights would write through them: this test needs one or the other.)
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
    }
    let outbox = buffered_outbox(&at, Durability::Outage);
    let rig = Rig::with_outbox("fl/health-ro", "health", outbox).await;
    let json = rig.first_on("health").await.json();
    let error = json["buffer"]["disk_error"].as_str().unwrap_or_default();
    eprintln!("health buffer.disk_error: {error}");
    assert!(
        error.contains(&at.display().to_string()) && error.contains("memory"),
        "the disk error names the directory and says readings stay in memory: {json}"
    );
    // And readings still flow, from memory.
    let readings = Watch::start(rig.broker.port, &rig.topic("dev/#")).await;
    rig.agent.reading("v", 1.0);
    readings
        .wait_for(&rig.topic("dev/v"), DEADLINE, |_| true)
        .await;
    if mount.is_none() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The state directory fills up while the agent runs (`always` mode commits every 50 ms):
/// the health topic says so within seconds, not at its next minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_disk_that_fills_up_while_running_is_on_the_health_topic_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("state");
    let Some(_mount) = Mount::tmpfs(&at, "size=256k") else {
        eprintln!("cannot mount a tmpfs here (not root): skipped; tests/buffer_faults.rs covers disk full");
        return;
    };
    let outbox = buffered_outbox(&at, Durability::Always);
    let rig = Rig::with_outbox("fl/health-full", "health", outbox).await;
    let first = rig.first_on("health").await;
    assert_eq!(
        first.json()["buffer"]["disk_error"],
        serde_json::Value::Null
    );

    let filling = std::time::Instant::now();
    for i in 0..300 {
        rig.agent
            .outbox
            .push(rig.topic(&format!("dev/big{}", i % 5)), 0, vec![b'x'; 4096]);
    }
    let told = rig
        .watch
        .wait_for(&rig.topic("health"), DEADLINE, |m| {
            m.json()["buffer"]["disk_error"].is_string()
        })
        .await;
    eprintln!(
        "disk full reported on the health topic {:?} after the readings that filled it",
        filling.elapsed()
    );
    let error = told.json()["buffer"]["disk_error"].to_string();
    assert!(error.contains("full"), "{error}");
    wait_until("the readings drained from memory", DEADLINE, || {
        (rig.agent.outbox.depth() == 0).then_some(())
    })
    .await;
    // 300 readings, one change: the message on connect and the one that told.
    let health_messages = rig
        .watch
        .snapshot()
        .iter()
        .filter(|m| m.topic.ends_with("/health"))
        .count();
    assert_eq!(health_messages, 2, "{:?}", rig.watch.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_what_is_queued_then_offline_and_returns() {
    let rig = Rig::start("fl/bye", "#", |_| {}).await;
    rig.wait_online().await;
    for i in 0..500 {
        rig.agent.reading(&format!("p{}", i % 5), i as f64);
    }
    rig.agent.shutdown.cancel();
    let started = std::time::Instant::now();
    wait_until("uplink::run returned", Duration::from_secs(5), || {
        rig.agent.task.is_finished().then_some(())
    })
    .await;
    eprintln!("uplink returned {:?} after cancel", started.elapsed());
    let status = rig
        .watch
        .wait_for(&rig.topic("status"), DEADLINE, |m| m.payload == "offline")
        .await;
    assert_eq!(status.payload, "offline");
    let all = rig.watch.snapshot();
    assert_eq!(missing(&seqs(&all), 500), Vec::<u64>::new());
    // The goodbye comes after the last reading.
    let offline_at = all.iter().position(|m| m.payload == "offline").unwrap();
    assert!(all[offline_at..].iter().all(|m| !m.topic.contains("/dev/")));
    let retained = retained_on(rig.broker.port, &rig.topic("status"), DEADLINE).await;
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
