//! Drives the real `uplink::run` against a broker (directly or through the fault proxy), fed
//! by a test producer of readings with sequence numbers. No Modbus involved.
//!
//! Used by tests/uplink.rs, tests/link.rs and benches/link_detection.rs via `#[path]`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fieldlink::buffer::{self, store::Limits, IoDriver, Outbox};
use fieldlink::config::{Durability, Mqtt, PayloadMode, Replay, Server, WhenFull};
use fieldlink::health::{Health, LinkReport, LinkState};
use fieldlink::model::{CommandSink, Reading, Sample, SampleSink, Value};
use fieldlink::uplink::{self, Publisher};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::wait_until;
use crate::support::watch::{Message, Watch};

pub fn mqtt(port: u16, prefix: &str, keep_alive: Duration) -> Mqtt {
    Mqtt {
        host: "127.0.0.1".into(),
        port,
        client_id: format!("{prefix}-agent").replace('/', "-"),
        keep_alive,
        qos: 1,
        prefix: prefix.into(),
        username: None,
        password_file: None,
        tls: None,
        connect_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(4),
        payload: PayloadMode::Json,
        queue_capacity: 100_000,
        report: None,
        command_max_age: Duration::from_secs(30),
        health_interval: Duration::from_secs(60),
        servers: vec![Server {
            host: "127.0.0.1".into(),
            port,
        }],
    }
}

pub struct Agent {
    pub cfg: Mqtt,
    pub outbox: Arc<Outbox>,
    pub health: Arc<Health>,
    pub publisher: Arc<Publisher>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    producer: Option<JoinHandle<()>>,
}

impl Agent {
    pub fn start(cfg: Mqtt) -> Agent {
        let outbox = Arc::new(Outbox::new(cfg.queue_capacity, 1));
        Agent::start_with_outbox(cfg, outbox)
    }

    /// Like [`start`](Self::start) over a given outbox (e.g. one with a durable buffer).
    /// The health topic gets the same sections as in the daemon.
    pub fn start_with_outbox(cfg: Mqtt, outbox: Arc<Outbox>) -> Agent {
        Agent::start_full(cfg, outbox, None)
    }

    /// Like [`start`](Self::start), subscribed to commands, which go to `commands`.
    pub fn start_with_commands(cfg: Mqtt, commands: Arc<dyn CommandSink>) -> Agent {
        let outbox = Arc::new(Outbox::new(cfg.queue_capacity, 1));
        Agent::start_full(cfg, outbox, Some(commands))
    }

    fn start_full(cfg: Mqtt, outbox: Arc<Outbox>, commands: Option<Arc<dyn CommandSink>>) -> Agent {
        let health = Health::new();
        fieldlink::app::report_to_health(&health, &outbox);
        let publisher = Arc::new(Publisher::new(&cfg, outbox.clone()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(uplink::run(
            cfg.clone(),
            outbox.clone(),
            health.clone(),
            commands,
            None,
            shutdown.clone(),
        ));
        Agent {
            cfg,
            outbox,
            health,
            publisher,
            shutdown,
            task,
            producer: None,
        }
    }

    /// Waits until the link is up and the broker acknowledged everything queued.
    pub async fn drained(&self, deadline: Duration) {
        wait_until("the outbox drained", deadline, || {
            (self.is_up() && self.outbox.depth() == 0).then_some(())
        })
        .await;
    }

    pub fn link(&self) -> LinkReport {
        self.health.link()
    }

    pub fn is_up(&self) -> bool {
        self.link().state == LinkState::Up
    }

    /// Pushes one reading of `point` on device `dev`.
    pub fn reading(&self, point: &str, value: f64) {
        self.publisher.send(Sample::Reading(Reading {
            device: Arc::from("dev"),
            point: Arc::from(point),
            value: Ok(Value::Float(value)),
            unit: Some(Arc::from("V")),
            ts_ms: fieldlink::model::unix_ms_now(),
        }));
    }

    pub fn publisher_send_availability(&self, device: &str, online: bool) {
        self.publisher.send(Sample::DeviceAvailability {
            device: Arc::from(device),
            online,
        });
    }

    /// Produces a reading every `every`, cycling over `points` points, until stopped.
    pub fn produce(&mut self, points: usize, every: Duration) {
        let publisher = self.publisher.clone();
        self.producer = Some(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                publisher.send(Sample::Reading(Reading {
                    device: Arc::from("dev"),
                    point: Arc::from(format!("p{}", n % points as u64)),
                    value: Ok(Value::Float(n as f64)),
                    unit: Some(Arc::from("V")),
                    ts_ms: fieldlink::model::unix_ms_now(),
                }));
                n += 1;
            }
        }));
    }

    pub fn stop_producing(&mut self) {
        if let Some(p) = self.producer.take() {
            p.abort();
        }
    }

    /// Reading numbers handed out so far in this boot are `1..=last_seq()`.
    pub fn last_seq(&self) -> u64 {
        self.outbox.last_reading().seq
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_producing();
        self.task.abort();
    }
}

/// Every `seq` seen in reading payloads under `prefix`. These agents run one boot (the
/// memory outbox's epoch 1), so `seq` alone identifies a reading and must be dense.
pub fn seqs(messages: &[Message]) -> BTreeSet<u64> {
    messages
        .iter()
        .filter_map(|m| {
            let json = m.json();
            let seq = json.get("seq").and_then(|s| s.as_u64())?;
            assert_eq!(json["boot"], 1, "one boot: {}", m.payload);
            Some(seq)
        })
        .collect()
}

/// The highest seq per reading topic.
pub fn newest_per_topic(messages: &[Message]) -> BTreeMap<String, u64> {
    let mut newest = BTreeMap::new();
    for m in messages {
        if let Some(seq) = m.json().get("seq").and_then(|s| s.as_u64()) {
            let e = newest.entry(m.topic.clone()).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    newest
}

pub fn missing(seen: &BTreeSet<u64>, upto: u64) -> Vec<u64> {
    (1..=upto).filter(|s| !seen.contains(s)).collect()
}

/// Waits until every seq from 1 to `last` is among what `seen` returns, or panics after
/// `deadline` naming the seqs that never came. Needed after [`Agent::drained`] too: a PUBACK
/// says the broker took a reading, not that it already forwarded it on the subscriber's own
/// connection, and the last acknowledged readings can still be on their way (13 were, once,
/// with the whole suite running beside the test).
pub async fn all_arrived(last: u64, deadline: Duration, seen: impl Fn() -> BTreeSet<u64>) {
    let start = std::time::Instant::now();
    loop {
        let lost = missing(&seen(), last);
        if lost.is_empty() {
            return;
        }
        assert!(
            start.elapsed() <= deadline,
            "of {last} readings these never reached the subscriber within {deadline:?}: {lost:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a subscriber arriving now gets retained on `topic` (waits for it until `deadline`).
pub async fn retained_on(port: u16, topic: &str, deadline: Duration) -> Message {
    Watch::start(port, topic)
        .await
        .wait_for(topic, deadline, |m| m.retain)
        .await
}

/// A durable buffer under `dir` that keeps everything (no size or age bound in reach) and
/// never spills on its own.
pub fn buffer_settings(
    dir: &Path,
    durability: Durability,
    commit_interval: Duration,
) -> buffer::Settings {
    buffer::Settings {
        dir: dir.to_path_buf(),
        durability,
        commit_interval,
        limits: Limits {
            max_size: 1 << 30,
            max_age: Duration::from_secs(3600 * 24),
            when_full: WhenFull::DropOldest,
        },
        replay: Replay::All,
        replay_rate: None,
        spill_threshold: usize::MAX,
        capacity: 100_000,
        clock: Arc::new(fieldlink::buffer::clock::SystemClock::new()),
    }
}

/// An outbox over such a buffer, its I/O on its own thread as in the daemon.
pub fn buffered_outbox(dir: &Path, durability: Durability) -> Arc<Outbox> {
    let settings = buffer_settings(dir, durability, Duration::from_millis(50));
    Arc::new(Outbox::open(settings, 1, IoDriver::Thread))
}
