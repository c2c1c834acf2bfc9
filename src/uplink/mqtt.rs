//! The MQTT link: the only module that imports rumqttc.
//!
//! Owns the connection to the broker: connect with our own timeout and backoff, the check of
//! what the broker kept and routes (`broker_check`) and the retained `online` birth after
//! every CONNACK, republishing lost retained state (`republish`), the keep-alive verdict
//! (1.5 x KA, see `state`), draining the outbox with a bounded send window, pairing PUBACKs
//! with record sequence numbers, giving up on a record the broker never takes
//! (`quarantine`), logging failures once per cause (`diagnose`, `state::ComplaintPacer`), the
//! health topic, and the orderly goodbye on shutdown. It must not decide topics or payloads
//! (`topic`) nor timing policy (`state`), and it never treats rumqttc as a store: a record
//! leaves the outbox only on its PUBACK (QoS 1) or once written (QoS 0).
//!
//! Design (see FIELD-NOTES, rumqttc 0.25):
//! - One fresh `EventLoop` per connection. `poll()` runs in its own task and forwards events
//!   over a bounded channel, so the driver can `select!` on events, the keep-alive deadline,
//!   the outbox, the health timer and shutdown without ever cancelling a `poll()` halfway
//!   through a write. On any failure the event loop is dropped with everything rumqttc still
//!   held (`pending`, in-flight state), and our outbox puts unacknowledged records back at its
//!   head: rumqttc never resends behind our back and never silently drops a record.
//! - Clean session: our outbox is the store either way (rumqttc clears `pending` on a
//!   `session_present = false` CONNACK), and a clean session avoids rumqttc's packet-id
//!   collision livelock after a lost session.
//! - Publishes go through `try_publish` from the driver; the window of unacknowledged records
//!   stays below `set_inflight`, so packet ids never collide and the request channel never
//!   fills.
//! - Republished retained messages are PUBACKed like records and resent after a lost
//!   connection, but they are not outbox records: the republish set is rebuilt from what the
//!   broker acknowledges, takes no sequence number, is never spilled to disk, and jumps the
//!   queue (a backlog of hours must not keep a late subscriber waiting for the state).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::broker_check::{BrokerCheck, Retained, Routing, CHECK_WAIT};
use super::diagnose::{self, Diagnosis, Severity, Target};
use super::quarantine::{Ending, Quarantine, Unacked, SUSPECT_WINDOW};
use super::republish::RepublishSet;
use super::state::{ComplaintPacer, HealthFacts, HealthPacer, KeepAliveWatch, Link, Say};
use super::topic::{self, OutboxFacts};
use super::user_timeout;
use crate::config::Mqtt;
use crate::health::{Health, HealthReport, LinkState, ROUTING_OK, ROUTING_UNCHECKED};
use crate::queue::{Outbox, Record};

/// Records handed to rumqttc and not yet acknowledged.
const RECORD_WINDOW: usize = 64;
/// rumqttc's own in-flight limit: above our window plus the birth, health and `offline`.
const RUMQTT_INFLIGHT: u16 = 100;
/// Request channel between our client handle and the event loop.
const REQUEST_CHANNEL: usize = 128;
/// The largest MQTT packet we send or accept. A record that cannot fit is given up at once
/// (rumqttc would fail the whole connection on it).
const MAX_PACKET: usize = 256 * 1024;
const HEALTH_EVERY: Duration = Duration::from_secs(60);
/// How often the health report is looked at for a change worth an early message (sent at
/// most once per `state::HEALTH_MIN_GAP`).
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// On shutdown: time to publish what is queued, then to get the `offline` acknowledged, then
/// to send DISCONNECT; together well inside systemd's 5 s budget.
const DRAIN_BUDGET: Duration = Duration::from_millis(2500);
const OFFLINE_BUDGET: Duration = Duration::from_millis(1000);
const DISCONNECT_BUDGET: Duration = Duration::from_millis(500);

/// Everything a connection attempt needs that does not change between attempts.
struct Settings {
    cfg: Mqtt,
    /// Keep-alive rounded to whole seconds (MQTT carries seconds), at least 1 s.
    keep_alive: Duration,
    qos: QoS,
    tls: Option<Arc<rustls::ClientConfig>>,
    status_topic: String,
    health_topic: String,
    /// `host:port`, for messages.
    broker: String,
}

impl Settings {
    fn target(&self) -> Target<'_> {
        Target {
            broker: &self.broker,
            host: &self.cfg.host,
            client_id: &self.cfg.client_id,
        }
    }
}

/// What the uplink remembers across connections.
struct Memory {
    republish: RepublishSet,
    quarantine: Quarantine,
    /// Failed attempts (refusals, TLS, unreachable broker).
    failures: ComplaintPacer,
    /// The broker not delivering our messages.
    routing: ComplaintPacer,
    /// The last connection was closed while the broker check waited for its SUBACK: the
    /// next one goes without the check (see `broker_check`).
    skip_check: bool,
}

/// How one connection ended.
enum SessionEnd {
    Shutdown,
    Failed(Failure),
}

/// A connection that failed or was lost.
struct Failure {
    diagnosis: Diagnosis,
    at: Instant,
    /// A CONNACK arrived: since when.
    connected_at: Option<Instant>,
    /// When the birth was written, if it was.
    birth_written_at: Option<Instant>,
    /// The broker acknowledged our birth: the connection worked.
    worked: bool,
    /// It ended while the broker check waited for its SUBACK.
    while_subscribing: bool,
    /// Records handed out and not acknowledged.
    unacked: Vec<UnackedRecord>,
}

struct UnackedRecord {
    id: u64,
    topic: String,
    bytes: usize,
    written_at: Option<Instant>,
}

impl Failure {
    fn before_connack(diagnosis: Diagnosis) -> Failure {
        Failure {
            diagnosis,
            at: Instant::now(),
            connected_at: None,
            birth_written_at: None,
            worked: false,
            while_subscribing: false,
            unacked: Vec::new(),
        }
    }
}

pub async fn run(
    cfg: Mqtt,
    outbox: Arc<Outbox>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = match &cfg.tls {
        Some(t) => Some(super::tls::client_config(t)?),
        None => None,
    };
    let settings = Settings {
        keep_alive: Duration::from_secs(cfg.keep_alive.as_secs_f64().round().max(1.0) as u64),
        qos: if cfg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        status_topic: topic::gateway_status_topic(&cfg.prefix),
        health_topic: topic::health_topic(&cfg.prefix),
        broker: format!("{}:{}", cfg.host, cfg.port),
        tls,
        cfg,
    };
    let mut link = Link::new(
        settings.cfg.backoff_initial,
        settings.cfg.backoff_max,
        fastrand::Rng::new(),
    );
    let mut memory = Memory {
        republish: RepublishSet::new(),
        quarantine: Quarantine::new(),
        failures: ComplaintPacer::new(),
        routing: ComplaintPacer::new(),
        skip_check: false,
    };
    // The loop ticks on every broker event (at least one per keep-alive while up), and
    // between connection attempts, which may be a backoff plus a connect timeout apart.
    let beat = health.register(
        "uplink",
        settings.cfg.backoff_max
            + settings.cfg.connect_timeout
            + settings.keep_alive * 3
            + HEALTH_EVERY
            + CHECK_WAIT,
    );
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        beat.tick();
        let end = Session::connect(
            &settings,
            &outbox,
            &health,
            &mut link,
            &mut memory,
            &shutdown,
            &beat,
        )
        .await;
        let failure = match end {
            SessionEnd::Shutdown => {
                outbox.requeue_inflight();
                return Ok(());
            }
            SessionEnd::Failed(f) => f,
        };
        // The culprit of a disconnect is still in flight: decide before requeueing.
        quarantine_after(&failure, &settings, &outbox, &health, &mut memory);
        let requeued = outbox.requeue_inflight();
        memory.republish.connection_lost();
        memory.skip_check = failure.while_subscribing
            && failure.diagnosis.ending == Ending::ClosedByBroker
            && !memory.skip_check;
        let diagnosis = explain(&failure, &settings);
        let delay = link.on_down(Instant::now());
        health.set_link(|l| {
            l.state = LinkState::Down;
            l.last_error = Some(diagnosis.text.clone());
        });
        log_failure(&failure, &diagnosis, delay, requeued, &mut memory.failures);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// The failure's diagnosis, sharpened by what happened on the connection: a broker that
/// closes the connection instead of answering our CONNECT, or that accepts us and then closes
/// it over our retained birth, is refusing us too.
fn explain(failure: &Failure, settings: &Settings) -> Diagnosis {
    let d = &failure.diagnosis;
    // A clean close (EOF), not a reset: a broker that refuses our CONNECT reads it whole
    // and closes, while a flaky path resets.
    if failure.connected_at.is_none() && d.cause == diagnose::CLOSED {
        return diagnose::closed_before_connack(settings.target());
    }
    if let (Some(connected), Some(birth), false) = (
        failure.connected_at,
        failure.birth_written_at,
        failure.worked,
    ) {
        let soon_after_birth = failure.at.saturating_duration_since(birth) <= SUSPECT_WINDOW;
        if d.ending == Ending::ClosedByBroker && soon_after_birth {
            return diagnose::closed_before_birth(
                failure.at.saturating_duration_since(connected),
                settings.target(),
            );
        }
    }
    d.clone()
}

/// A working connection that is lost is news (info); failing attempts are complained about
/// when they start, change cause, and every 10 minutes (warn when a setting must change).
fn log_failure(
    failure: &Failure,
    d: &Diagnosis,
    delay: Duration,
    requeued: usize,
    pacer: &mut ComplaintPacer,
) {
    let retry = delay.as_secs_f64();
    if failure.worked {
        pacer.resolved();
        tracing::info!(
            requeued,
            "MQTT link down: {}; reconnecting in {retry:.1}s",
            d.text
        );
        return;
    }
    let message = match pacer.occurred(&d.cause, failure.at) {
        Say::Nothing => {
            tracing::debug!(
                "MQTT connect failed again: {}; retrying in {retry:.1}s",
                d.text
            );
            return;
        }
        Say::New => format!(
            "cannot connect to the MQTT broker: {}; retrying in {retry:.1}s, with backoff, \
             until it works",
            d.text
        ),
        Say::Reminder { repeats, lasting } => format!(
            "still cannot connect to the MQTT broker: {} ({repeats} more failed attempts in \
             the last {})",
            d.text,
            humantime::format_duration(Duration::from_secs(lasting.as_secs()))
        ),
    };
    match d.severity {
        Severity::Warn => tracing::warn!("{message}"),
        Severity::Info => tracing::info!("{message}"),
    }
}

/// Gives up on the record the broker keeps closing the connection over, if one earned it
/// (see `quarantine`): dropped from the outbox, counted, logged, and on the health topic.
fn quarantine_after(
    failure: &Failure,
    settings: &Settings,
    outbox: &Outbox,
    health: &Health,
    memory: &mut Memory,
) {
    if settings.qos == QoS::AtMostOnce {
        // QoS 0 records leave the outbox once written: none is ever resent.
        return;
    }
    let unacked: Vec<Unacked> = failure
        .unacked
        .iter()
        .map(|u| Unacked {
            id: u.id,
            written_at: u.written_at,
        })
        .collect();
    let Some(id) =
        memory
            .quarantine
            .connection_ended(failure.diagnosis.ending, &unacked, failure.at)
    else {
        return;
    };
    let Some(culprit) = failure.unacked.iter().find(|u| u.id == id) else {
        return;
    };
    let why = format!(
        "the broker closed the connection right after it was sent, {} times in a row (larger \
         than the broker's max_packet_size?)",
        super::quarantine::STRIKES
    );
    give_up(
        outbox,
        health,
        memory,
        id,
        &culprit.topic,
        culprit.bytes,
        &why,
    );
}

/// Drops the in-flight record `id` from the outbox for good, counted as dropped.
fn give_up(
    outbox: &Outbox,
    health: &Health,
    memory: &mut Memory,
    id: u64,
    topic: &str,
    bytes: usize,
    why: &str,
) {
    if !outbox.discard(id) {
        return;
    }
    memory.republish.record_given_up(topic);
    tracing::error!(
        topic,
        bytes,
        "gave up on a message on {topic} ({bytes} bytes): {why}. It is dropped and counted \
         (health: dropped, quarantined); the queue moves on"
    );
    let summary = format!("{topic} ({bytes} bytes): {why}");
    health.set_link(|l| {
        l.quarantined += 1;
        l.last_quarantined = Some(summary);
    });
}

/// One entry per publish handed to rumqttc, in request order.
struct Sent {
    what: SentKind,
    qos: QoS,
    /// When rumqttc wrote it (the `Outgoing::Publish` event).
    written_at: Option<Instant>,
}

enum SentKind {
    /// A record from the outbox, and whether it went out retained.
    Record {
        record: Record,
        retained: bool,
    },
    /// A retained message put back from the republish set.
    Republish(String),
    Birth,
    Offline,
    /// Health: nobody waits for it.
    Other,
}

struct Session<'a> {
    settings: &'a Settings,
    outbox: &'a Outbox,
    health: &'a Health,
    memory: &'a mut Memory,
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    /// Dropping it drops the event loop with its socket and whatever rumqttc still held;
    /// our outbox has every unacknowledged record.
    _poller: AbortOnDrop,
    watch: KeepAliveWatch,
    check: BrokerCheck,
    connected_at: Instant,
    /// Requests handed to rumqttc whose `Outgoing::Publish` event has not come yet.
    unwritten: VecDeque<Sent>,
    /// Written QoS 1 publishes waiting for their PUBACK, by packet id.
    unacked: HashMap<u16, Sent>,
    /// Records taken from the outbox and not handed to rumqttc yet: a suspect waits here
    /// until it can go alone (see `quarantine`), and what was taken after it waits behind.
    held: VecDeque<Record>,
    /// Records and republishes handed to rumqttc and not yet settled.
    in_window: usize,
    birth_written_at: Option<Instant>,
    birth_sent: bool,
    birth_acked: bool,
    offline_acked: bool,
    health_pacer: HealthPacer,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<'a> Session<'a> {
    /// Connects, runs the session until it ends, and reports how.
    async fn connect(
        settings: &'a Settings,
        outbox: &'a Outbox,
        health: &'a Health,
        link: &mut Link,
        memory: &'a mut Memory,
        shutdown: &CancellationToken,
        beat: &crate::health::Beat,
    ) -> SessionEnd {
        let failed = |diagnosis| SessionEnd::Failed(Failure::before_connack(diagnosis));
        health.set_link(|l| l.state = LinkState::Connecting);
        let options = match mqtt_options(settings) {
            Ok(o) => o,
            Err(e) => {
                return failed(Diagnosis {
                    cause: "password-file".into(),
                    severity: Severity::Warn,
                    text: format!("{e:#}"),
                    ending: Ending::Other,
                })
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
        // rumqttc uses one timeout (whole seconds) for connecting and for each flush: ours
        // while connecting, then 1.5 x KA so a write blocked on a dead link fails instead of
        // hanging.
        let connect_secs = settings.cfg.connect_timeout.as_secs_f64().ceil() as u64;
        eventloop
            .network_options
            .set_connection_timeout(connect_secs.max(1));

        let sockets_before = user_timeout::snapshot();
        let connack = tokio::select! {
            r = tokio::time::timeout(settings.cfg.connect_timeout, eventloop.poll()) => r,
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        match connack {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => {
                return failed(Diagnosis {
                    cause: "protocol".into(),
                    severity: Severity::Warn,
                    text: format!(
                        "broker {} answered the connect with {other:?} instead of CONNACK",
                        settings.broker
                    ),
                    ending: Ending::Other,
                })
            }
            Ok(Err(e)) => return failed(diagnose::connection_error(&e, settings.target())),
            Err(_) => {
                return failed(Diagnosis {
                    cause: "timeout:connack".into(),
                    severity: Severity::Info,
                    text: format!(
                        "no CONNACK from {} within {:?} (mqtt.connect_timeout)",
                        settings.broker, settings.cfg.connect_timeout
                    ),
                    ending: Ending::Other,
                })
            }
        }
        let now = Instant::now();
        let user_timeout = settings.keep_alive.mul_f64(1.5);
        let flush_secs = user_timeout.as_secs_f64().ceil() as u64;
        eventloop
            .network_options
            .set_connection_timeout(flush_secs.max(1));
        if user_timeout::apply_since(&sockets_before, settings.cfg.port, user_timeout) == 0 {
            tracing::debug!("could not find the broker socket to set TCP_USER_TIMEOUT on");
        }
        link.on_connected(now);
        let reconnects = link.reconnects();
        health.set_link(|l| {
            l.state = LinkState::Up;
            l.reconnects = reconnects;
            // Each connection is checked afresh: it may reach another broker, another ACL.
            l.routing = ROUTING_UNCHECKED.to_string();
        });
        tracing::debug!(broker = %settings.broker, reconnects, "CONNACK");

        let check = if memory.skip_check {
            BrokerCheck::skipped()
        } else {
            BrokerCheck::subscribed(now)
        };
        let (tx, rx) = mpsc::channel(64);
        let poller = AbortOnDrop(tokio::spawn(drive(eventloop, tx)));
        let mut session = Session {
            settings,
            outbox,
            health,
            memory,
            client,
            events: rx,
            _poller: poller,
            watch: KeepAliveWatch::new(settings.keep_alive, now),
            check,
            connected_at: now,
            unwritten: VecDeque::new(),
            unacked: HashMap::new(),
            held: VecDeque::new(),
            in_window: 0,
            birth_written_at: None,
            birth_sent: false,
            birth_acked: false,
            offline_acked: false,
            health_pacer: HealthPacer::new(),
        };
        match session.serve(shutdown, beat).await {
            Ok(()) => {
                session.goodbye().await;
                SessionEnd::Shutdown
            }
            Err(diagnosis) => SessionEnd::Failed(session.failure(diagnosis)),
        }
    }

    fn failure(&self, diagnosis: Diagnosis) -> Failure {
        let unacked = self
            .unwritten
            .iter()
            .chain(self.unacked.values())
            .filter_map(|sent| match &sent.what {
                SentKind::Record { record, .. } => Some(UnackedRecord {
                    id: record.seq,
                    topic: record.topic.clone(),
                    bytes: record.payload.len(),
                    written_at: sent.written_at,
                }),
                _ => None,
            })
            .collect();
        Failure {
            diagnosis,
            at: Instant::now(),
            connected_at: Some(self.connected_at),
            birth_written_at: self.birth_written_at,
            worked: self.birth_acked,
            while_subscribing: self.check.subscribing(),
            unacked,
        }
    }

    /// The check, the birth, then the outbox, until shutdown (`Ok`) or the link fails.
    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        beat: &crate::health::Beat,
    ) -> Result<(), Diagnosis> {
        // Subscribed before the birth goes out, so the broker tells us what it kept (see
        // `broker_check`). The birth goes first after every CONNACK otherwise: on a session
        // takeover mosquitto has just published our previous connection's will.
        if self.check.subscribing() {
            self.client
                .try_subscribe(&self.settings.status_topic, QoS::AtMostOnce)
                .map_err(|e| self.client_error(e))?;
        }
        let mut health_timer =
            tokio::time::interval_at(Instant::now() + HEALTH_EVERY, HEALTH_EVERY);
        let mut health_check =
            tokio::time::interval_at(Instant::now() + HEALTH_CHECK_EVERY, HEALTH_CHECK_EVERY);
        health_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.follow_check()?;
            self.fill_window()?;
            beat.tick();
            let check_due = self.check.deadline();
            let can_take = self.birth_sent
                && self.held.is_empty()
                && self.memory.quarantine.probe().is_none()
                && self.in_window < RECORD_WINDOW;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                ev = self.events.recv() => self.on_event(ev)?,
                _ = tokio::time::sleep_until(self.watch.deadline()) => {
                    return Err(self.keep_alive_verdict());
                }
                _ = tokio::time::sleep_until(check_due.unwrap_or_else(Instant::now)),
                    if check_due.is_some() => self.check.on_deadline(Instant::now()),
                _ = self.outbox.wait_queued(), if can_take => {}
                _ = health_timer.tick(), if self.birth_sent => {
                    self.publish_health(self.health.report())?
                }
                _ = health_check.tick() => {
                    let report = self.health.report();
                    if self.birth_sent
                        && self.health_pacer.due(&self.health_facts(&report), Instant::now())
                    {
                        self.publish_health(report)?;
                    }
                }
            }
        }
    }

    /// Acts on what the broker check learnt: the birth, the republish, the routing verdict.
    fn follow_check(&mut self) -> Result<(), Diagnosis> {
        if self.check.take_birth_due() {
            let status = self.settings.status_topic.clone();
            self.publish_own(
                &status,
                topic::ONLINE.as_bytes(),
                QoS::AtLeastOnce,
                SentKind::Birth,
            )?;
            self.birth_sent = true;
            self.publish_health(self.health.report())?;
        }
        if let Some(retained) = self.check.take_retained() {
            self.on_retained_verdict(retained);
        }
        if let Some(routing) = self.check.take_routing() {
            self.on_routing_verdict(routing);
        }
        Ok(())
    }

    fn on_retained_verdict(&mut self, verdict: Retained) {
        if verdict == Retained::Kept {
            tracing::debug!("the broker kept our retained messages");
            return;
        }
        let pending = self.memory.republish.broker_lost_all();
        if pending == 0 {
            return;
        }
        if verdict == Retained::Lost {
            tracing::info!(
                topics = pending,
                "the broker has none of our retained messages (restarted without \
                 persistence?): republishing the newest value of each of our {pending} \
                 retained topics ahead of the queue"
            );
        } else {
            // The routing verdict that comes with it is what the operator must hear about.
            tracing::debug!(
                topics = pending,
                "could not tell whether the broker kept our retained messages: republishing \
                 the newest value of each of our {pending} retained topics to be sure"
            );
        }
    }

    fn on_routing_verdict(&mut self, verdict: Routing) {
        let status = &self.settings.status_topic;
        let (cause, text) = match verdict {
            Routing::Delivered => {
                if self.memory.routing.resolved().is_some() {
                    tracing::info!("the broker delivers our messages again");
                }
                self.health.set_link(|l| l.routing = ROUTING_OK.to_string());
                return;
            }
            Routing::NotDelivered => (
                "not-delivered",
                format!(
                    "the broker accepts but does not deliver our messages: check its ACL (this \
                     gateway must be allowed to publish to, and read back, {}/#). {status} did \
                     not come back to our own subscription within {}s of being acknowledged, \
                     so readings may vanish while every publish looks fine",
                    self.settings.cfg.prefix,
                    CHECK_WAIT.as_secs()
                ),
            ),
            Routing::NotChecked => (
                "not-checked",
                format!(
                    "the broker refused our subscription to {status} (in its SUBACK, or by \
                     closing the connection), so it cannot be checked that it delivers our \
                     messages, nor that it kept our retained messages (they are republished \
                     after such connects). Check its ACL: allow this gateway to subscribe to \
                     {status}"
                ),
            ),
        };
        match self.memory.routing.occurred(cause, Instant::now()) {
            Say::Nothing => tracing::debug!("{text}"),
            Say::New | Say::Reminder { .. } => tracing::warn!("{text}"),
        }
        let summary = match verdict {
            Routing::NotChecked => format!("unchecked: {text}"),
            _ => format!("not delivered: {text}"),
        };
        self.health.set_link(|l| l.routing = summary);
    }

    fn keep_alive_verdict(&self) -> Diagnosis {
        Diagnosis {
            cause: "keep-alive".into(),
            severity: Severity::Info,
            text: format!(
                "nothing received from the broker for {:.1}s (1.5 x keep-alive)",
                self.watch.allowance().as_secs_f64()
            ),
            ending: Ending::Other,
        }
    }

    fn client_error(&self, e: rumqttc::ClientError) -> Diagnosis {
        Diagnosis {
            cause: "client".into(),
            severity: Severity::Info,
            text: format!("cannot hand a message to the MQTT client: {e}"),
            ending: Ending::Other,
        }
    }

    /// Shutdown with the link up: publish what is queued (bounded), then the retained
    /// `offline` (the broker sends no will on a clean DISCONNECT), then DISCONNECT.
    async fn goodbye(&mut self) {
        let drain_until = Instant::now() + DRAIN_BUDGET;
        while self.birth_sent && self.outbox.depth() > 0 && Instant::now() < drain_until {
            if self.fill_window().is_err() || !self.next_event_before(drain_until).await {
                return;
            }
        }
        let left = self.outbox.depth();
        if left > 0 {
            tracing::warn!(
                left,
                "shutting down with readings not yet acknowledged by the broker"
            );
        }
        let status = self.settings.status_topic.clone();
        if self
            .publish_own(
                &status,
                topic::OFFLINE.as_bytes(),
                QoS::AtLeastOnce,
                SentKind::Offline,
            )
            .is_err()
        {
            return;
        }
        let offline_until = Instant::now() + OFFLINE_BUDGET;
        while !self.offline_acked && Instant::now() < offline_until {
            if !self.next_event_before(offline_until).await {
                return;
            }
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        let disconnect_until = Instant::now() + DISCONNECT_BUDGET;
        loop {
            match tokio::time::timeout_at(disconnect_until, self.events.recv()).await {
                Ok(Some(Ok(Event::Outgoing(Outgoing::Disconnect)))) | Ok(None) | Err(_) => break,
                Ok(Some(Ok(ev))) => {
                    let _ = self.on_event(Some(Ok(ev)));
                }
                Ok(Some(Err(_))) => break,
            }
        }
        tracing::info!("MQTT link closed (shutdown)");
    }

    /// Handles one event if it comes before `until`; false when the link failed or time ran out.
    async fn next_event_before(&mut self, until: Instant) -> bool {
        let deadline = until.min(self.watch.deadline());
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(ev) => self.on_event(ev).is_ok(),
            Err(_) => false,
        }
    }

    fn on_event(&mut self, event: Option<Result<Event, ConnectionError>>) -> Result<(), Diagnosis> {
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(diagnose::connection_error(&e, self.settings.target())),
            None => {
                return Err(Diagnosis {
                    cause: "event-loop".into(),
                    severity: Severity::Info,
                    text: "the MQTT event loop stopped".into(),
                    ending: Ending::Other,
                })
            }
        };
        let now = Instant::now();
        match event {
            Event::Incoming(packet) => {
                self.watch.on_inbound(now);
                match packet {
                    Packet::PubAck(ack) => {
                        if let Some(sent) = self.unacked.remove(&ack.pkid) {
                            self.settle(sent);
                        }
                    }
                    Packet::SubAck(ack) => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                        self.check.on_suback(granted, now);
                    }
                    Packet::Publish(p) if p.topic == self.settings.status_topic => {
                        self.check.on_own_status(p.retain);
                    }
                    _ => {}
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some(mut sent) = self.unwritten.pop_front() else {
                    return Err(Diagnosis {
                        cause: "client".into(),
                        severity: Severity::Info,
                        text: "rumqttc wrote a publish we did not request".into(),
                        ending: Ending::Other,
                    });
                };
                sent.written_at = Some(now);
                if matches!(sent.what, SentKind::Birth) {
                    self.birth_written_at = Some(now);
                }
                if sent.qos == QoS::AtMostOnce {
                    self.settle(sent);
                } else {
                    self.unacked.insert(pkid, sent);
                }
            }
            Event::Outgoing(_) => {}
        }
        Ok(())
    }

    /// A publish is done: acknowledged (QoS 1) or written (QoS 0).
    fn settle(&mut self, sent: Sent) {
        match sent.what {
            SentKind::Record { record, retained } => {
                self.outbox.ack(record.seq);
                self.memory.quarantine.acknowledged(record.seq);
                if retained {
                    self.memory
                        .republish
                        .remember(&record.topic, &record.payload);
                }
                self.in_window = self.in_window.saturating_sub(1);
            }
            SentKind::Republish(topic) => {
                self.memory.republish.acknowledged(&topic);
                self.in_window = self.in_window.saturating_sub(1);
            }
            SentKind::Birth => {
                self.birth_acked = true;
                self.memory.failures.resolved();
                tracing::info!(
                    broker = %self.settings.broker,
                    reconnects = self.health.link().reconnects,
                    queued = self.outbox.depth(),
                    "MQTT link up"
                );
            }
            SentKind::Offline => self.offline_acked = true,
            SentKind::Other => {}
        }
    }

    /// Nothing of ours is on the wire: a suspect may go, alone.
    fn alone(&self) -> bool {
        self.unwritten.is_empty() && self.unacked.is_empty()
    }

    /// Hands rumqttc what fits in the window: republished retained state first (it must not
    /// wait behind a backlog), then outbox records, a suspect only alone.
    fn fill_window(&mut self) -> Result<(), Diagnosis> {
        if !self.birth_sent {
            return Ok(());
        }
        while self.in_window < RECORD_WINDOW {
            let Some((topic, payload)) = self.memory.republish.next() else {
                break;
            };
            self.client
                .try_publish(&topic, self.settings.qos, true, payload)
                .map_err(|e| self.client_error(e))?;
            self.unwritten.push_back(Sent {
                what: SentKind::Republish(topic),
                qos: self.settings.qos,
                written_at: None,
            });
            self.in_window += 1;
        }
        loop {
            if self.memory.quarantine.probe().is_some() {
                return Ok(());
            }
            if self.held.is_empty() {
                let room = RECORD_WINDOW.saturating_sub(self.in_window);
                if room == 0 {
                    return Ok(());
                }
                let batch = self.outbox.take(room);
                if batch.is_empty() {
                    if self.memory.quarantine.has_suspects() && self.outbox.depth() == 0 {
                        self.memory.quarantine.queue_empty();
                    }
                    return Ok(());
                }
                self.held.extend(batch);
            }
            while let Some(front) = self.held.front() {
                if self.in_window >= RECORD_WINDOW {
                    return Ok(());
                }
                let suspect = self.memory.quarantine.is_suspect(front.seq);
                if suspect && !self.alone() {
                    return Ok(());
                }
                let Some(record) = self.held.pop_front() else {
                    break;
                };
                let seq = record.seq;
                if self.send_record(record)? && suspect {
                    self.memory.quarantine.probe_sent(seq);
                    return Ok(());
                }
            }
        }
    }

    /// Hands one record to rumqttc; false when it was given up instead (too large to send).
    fn send_record(&mut self, record: Record) -> Result<bool, Diagnosis> {
        let bytes = publish_packet_size(&record.topic, record.payload.len());
        if bytes > MAX_PACKET {
            let why = format!(
                "as an MQTT packet it would be {bytes} bytes, more than the {MAX_PACKET} \
                 fieldlink sends"
            );
            give_up(
                self.outbox,
                self.health,
                self.memory,
                record.seq,
                &record.topic,
                record.payload.len(),
                &why,
            );
            self.memory.quarantine.acknowledged(record.seq);
            return Ok(false);
        }
        // Retained only while no newer reading of the same topic exists, so a replayed
        // record never overwrites a newer retained value.
        let retain = self.outbox.is_newest(&record);
        self.client
            .try_publish(
                &record.topic,
                self.settings.qos,
                retain,
                record.payload.clone(),
            )
            .map_err(|e| self.client_error(e))?;
        if retain {
            self.memory.republish.superseded(&record.topic);
        }
        self.unwritten.push_back(Sent {
            what: SentKind::Record {
                record,
                retained: retain,
            },
            qos: self.settings.qos,
            written_at: None,
        });
        self.in_window += 1;
        Ok(true)
    }

    /// Our own retained messages: birth, health, `offline`.
    fn publish_own(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        what: SentKind,
    ) -> Result<(), Diagnosis> {
        self.client
            .try_publish(topic, qos, true, payload.to_vec())
            .map_err(|e| self.client_error(e))?;
        self.unwritten.push_back(Sent {
            what,
            qos,
            written_at: None,
        });
        Ok(())
    }

    fn health_facts(&self, report: &HealthReport) -> HealthFacts {
        HealthFacts {
            link: report.link.state,
            troubles: report.troubles(),
            dropped: self.outbox.dropped(),
        }
    }

    fn publish_health(&mut self, report: HealthReport) -> Result<(), Diagnosis> {
        let facts = self.health_facts(&report);
        let payload = topic::health_payload(
            &report,
            OutboxFacts {
                depth: self.outbox.depth(),
                dropped: facts.dropped,
            },
            crate::model::unix_ms_now(),
        );
        let topic = self.settings.health_topic.clone();
        self.publish_own(&topic, &payload, QoS::AtMostOnce, SentKind::Other)?;
        self.health_pacer.published(facts, Instant::now());
        Ok(())
    }
}

/// Bytes of a QoS 1 PUBLISH packet: fixed header, remaining length, topic, packet id, payload.
fn publish_packet_size(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Polls one connection's event loop until its first error, which ends the connection:
/// `poll()` is never called again after an error (it would reconnect at once, without our
/// backoff).
async fn drive(mut eventloop: EventLoop, events: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}

fn mqtt_options(settings: &Settings) -> anyhow::Result<MqttOptions> {
    let cfg = &settings.cfg;
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(settings.keep_alive);
    o.set_clean_session(true);
    o.set_inflight(RUMQTT_INFLIGHT);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_last_will(LastWill::new(
        settings.status_topic.clone(),
        topic::OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        let password = match &cfg.password_file {
            Some(path) => read_password(path)?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if let Some(tls) = &settings.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    Ok(o)
}

/// Where the password lives: an absolute `password_file` as is; a relative one names a
/// systemd credential (`LoadCredential=NAME:…`) under `$CREDENTIALS_DIRECTORY` when that is
/// set, else a path relative to the working directory.
pub fn password_path(file: &Path) -> PathBuf {
    resolve_password_path(file, std::env::var_os("CREDENTIALS_DIRECTORY").as_deref())
}

fn resolve_password_path(file: &Path, credentials_dir: Option<&std::ffi::OsStr>) -> PathBuf {
    match credentials_dir {
        Some(dir) if file.is_relative() => Path::new(dir).join(file),
        _ => file.to_path_buf(),
    }
}

/// Read at every connect, so a rotated secret is picked up without a restart. One trailing
/// newline is not part of the password.
fn read_password(file: &Path) -> anyhow::Result<String> {
    let path = password_path(file);
    let raw = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the MQTT password from {} (mqtt.password_file); check the path and \
             that the fieldlink user may read it",
            path.display()
        )
    })?;
    let password = raw.strip_suffix('\n').unwrap_or(&raw);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_password_file_is_a_systemd_credential_when_the_directory_is_set() {
        let creds = Some(std::ffi::OsStr::new("/run/credentials/fieldlink.service"));
        assert_eq!(
            resolve_password_path(Path::new("/etc/fieldlink/pw"), creds),
            PathBuf::from("/etc/fieldlink/pw")
        );
        assert_eq!(
            resolve_password_path(Path::new("mqtt-password"), creds),
            PathBuf::from("/run/credentials/fieldlink.service/mqtt-password")
        );
        assert_eq!(
            resolve_password_path(Path::new("pw"), None),
            PathBuf::from("pw")
        );
    }

    #[test]
    fn the_password_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret \n").unwrap();
        assert_eq!(read_password(&path).unwrap(), "s3cret ");
        let err = format!(
            "{:#}",
            read_password(&dir.path().join("missing")).unwrap_err()
        );
        assert!(err.contains("mqtt.password_file"), "{err}");
    }
}
