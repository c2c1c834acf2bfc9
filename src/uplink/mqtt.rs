//! The MQTT link: the only module that drives rumqttc (`event_loop` polls it for us;
//! `diagnose` only reads its errors).
//!
//! Owns the connection to the broker and the I/O around it: connect with our own timeout
//! and backoff, the check of what the broker kept and routes (`broker_check`) and the
//! retained `online` birth after every CONNACK, republishing lost retained state
//! (`republish`), the keep-alive verdict (1.5 x KA, see `state`), draining the outbox through
//! a bounded send window, giving up on a record the broker never takes (`quarantine`),
//! logging failures once per cause, the health topic, Home Assistant discovery's
//! subscriptions and births (`homeassistant`), and the orderly goodbye on shutdown.
//! The decisions are made elsewhere, without I/O: when a publish is delivered (`delivery`),
//! how a connection ended and what to say about it (`session_end`, `diagnose`), topics and
//! payloads (`topic`), timing policy (`state`). It never treats rumqttc as a store: a record
//! leaves the outbox only when `delivery` settles it, on its PUBACK (QoS 1) or once written
//! (QoS 0).
//!
//! Design (see docs/design.md#rumqttc-025):
//! - One fresh `EventLoop` per connection, polled up to its CONNACK; then `event_loop` drives
//!   its state and codec on a task of its own (one write per turn's batch of requests) and
//!   forwards events over a bounded channel, so the session can `select!` on events, the
//!   keep-alive deadline, the outbox, the health timer and shutdown without ever cancelling a
//!   write halfway. On any failure the event loop is dropped with everything rumqttc still
//!   held (in-flight state), and our outbox puts unacknowledged records back at its head:
//!   rumqttc never resends behind our back and never silently drops a record.
//! - Clean session: our outbox is the store either way (rumqttc clears `pending` on a
//!   `session_present = false` CONNACK), and a clean session avoids rumqttc's packet-id
//!   collision livelock after a lost session.
//! - Publishes are gathered on `event_loop::Client` and submitted before the session waits;
//!   the window of unacknowledged records stays below `set_inflight`, so packet ids never
//!   collide.
//! - Republished retained messages are PUBACKed like records and resent after a lost
//!   connection, but they are not outbox records: the republish set is rebuilt from what the
//!   broker acknowledges, takes no sequence number, is never spilled to disk, and jumps the
//!   queue (a backlog of hours must not keep a late subscriber waiting for the state).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop, Outgoing, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ack_pacing::AckPacing;
use super::broker_check::{BrokerCheck, Retained, Routing, CHECK_WAIT};
use super::delivery::{self, Acked, Counted, Delivery, Written};
use super::diagnose::{self, Diagnosis, Severity};
use super::event_loop::{self, settles, AbortOnDrop, Client};
use super::failover::{AfterFailure, Failover};
use super::give_up::{give_up, quarantine_after};
use super::homeassistant;
use super::quarantine::GiveUp;
use super::session_end::{Failure, LogLine, SessionEnd, UnackedRecord};
use super::settings::{Dial, Memory, Settings};
use super::state::{HealthFacts, HealthPacer, KeepAliveWatch, Link, Say};
use super::subscriptions::{Purpose, Subscriptions};
use super::topic::{self, OutboxFacts};
use super::user_timeout;
use crate::buffer::{Outbox, Record};
use crate::config::Mqtt;
use crate::health::{Health, HealthReport, LinkState, ROUTING_OK, ROUTING_UNCHECKED};
use crate::homeassistant::Discovery;
use crate::model::CommandSink;

/// Records and republishes handed to the connection and not yet settled (see `delivery`).
/// What bounds a backlog's drain on a long link: at 300 ms round trip (cellular) 512
/// readings of ~100 bytes in flight drain 1 700 readings/s; 64 drained 210, not twice what
/// 5 meters of 24 points produce.
const RECORD_WINDOW: usize = 512;
/// Events handled in one turn of the session at most, so the keep-alive deadline, shutdown
/// and the timers are looked at between bursts.
const EVENTS_PER_TURN: usize = 256;
/// rumqttc's own request channel, which nothing uses: requests go through ours
/// (`event_loop::Client`) once connected.
const UNUSED_REQUEST_CHANNEL: usize = 1;
/// How long the agent goes without commands after a broker closed the connection over that
/// subscription: asking again at every connection would cost one connection in two.
const COMMANDS_BAR: Duration = Duration::from_secs(3600);
/// How often the health report is looked at for a change worth an early message (sent at
/// most once per `state::HEALTH_MIN_GAP`).
/// At most one answer to a stale `offline` in this span, so two clients on one prefix cannot
/// turn it into a storm.
const STALE_WILL_GAP: Duration = Duration::from_secs(5);
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// On shutdown: time to publish what is queued, then to get the `offline` acknowledged, then
/// to send DISCONNECT; together well inside systemd's 5 s budget.
const DRAIN_BUDGET: Duration = Duration::from_millis(2500);
const OFFLINE_BUDGET: Duration = Duration::from_millis(1000);
const DISCONNECT_BUDGET: Duration = Duration::from_millis(500);

/// Keeps the MQTT link up and drains the outbox until `shutdown` fires, then publishes what
/// is queued (bounded in time), the retained `offline` status, and disconnects. Returns an
/// error only for a configuration the user must fix (an unreadable TLS file); link failures
/// are retried with backoff for as long as it runs.
pub async fn run(
    cfg: Mqtt,
    outbox: Arc<Outbox>,
    health: Arc<Health>,
    commands: Option<Arc<dyn CommandSink>>,
    discovery: Option<Discovery>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Settings::new(cfg, commands)?;
    let mut failover = Failover::new(settings.servers.len());
    let mut link = Link::new(
        settings.cfg.backoff_initial,
        settings.cfg.backoff_max,
        fastrand::Rng::new(),
    );
    let mut memory = Memory::new(discovery);
    // The loop ticks on every broker event (at least one per keep-alive while up) and every
    // second for the health check, and between connection attempts, which may be a backoff
    // plus a connect timeout apart. Not the health heartbeat (5 min): a stuck uplink would
    // go unnoticed for that long.
    let beat = health.register(
        "uplink",
        settings.cfg.backoff_max
            + settings.cfg.connect_timeout
            + settings.keep_alive * 3
            + CHECK_WAIT,
    );
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        beat.tick();
        let server = failover.current();
        let end = Session::connect(
            Dial {
                settings: &settings,
                server,
            },
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
        if let Some(discovery) = &mut memory.discovery {
            discovery.connection_lost();
        }
        memory.skip_check = failure.skip_next_check(memory.skip_check);
        if failure.closed_on_commands() {
            memory.commands_barred_until = Some(Instant::now() + COMMANDS_BAR);
            tracing::warn!(
                "the broker closed the connection when we subscribed to commands ({}): it \
                 does not let this gateway read them, so writes from MQTT are off for the next \
                 {} min (then asked for again); allow the subscription in the broker's policy",
                settings.command_filter,
                COMMANDS_BAR.as_secs() / 60
            );
        }
        let diagnosis = failure.explain(settings.target(server));
        if let Some(at) = failure.connected_at {
            failover.connected(at);
        }
        if failure.worked {
            failover.worked();
        }
        let now = Instant::now();
        // Another server of the list is tried at once; the backoff comes once a round.
        let backoff = match failover.failed() {
            AfterFailure::RoundDone => link.on_down(now),
            AfterFailure::NextServer => Duration::ZERO,
        };
        let delay = backoff.max(failover.guard_wait(now));
        health.set_link(|l| {
            l.state = LinkState::Down;
            l.last_error = Some(diagnosis.text.clone());
        });
        // With a list, each line names the server it is about and the one tried next.
        let next = &settings.brokers[failover.current()];
        let said = |text: String| match settings.servers.len() {
            1 => text,
            _ => format!("{}: {text} (next: {next})", settings.brokers[server]),
        };
        match failure.log_line(&diagnosis, delay, &mut memory.failures) {
            LogLine::LinkDown(text) => tracing::info!(requeued, "{}", said(text)),
            LogLine::Complaint(Severity::Warn, text) => tracing::warn!("{}", said(text)),
            LogLine::Complaint(Severity::Info, text) => tracing::info!("{}", said(text)),
            LogLine::Again(text) => tracing::debug!("{}", said(text)),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// What a publish handed to rumqttc was, for when `delivery` settles it.
#[derive(Debug)]
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
    /// The index in `settings.servers` of the broker this session is connected to.
    server: usize,
    outbox: &'a Outbox,
    health: &'a Health,
    memory: &'a mut Memory,
    client: Client,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    /// Dropping it drops the event loop with its socket and whatever rumqttc still held;
    /// our outbox has every unacknowledged record.
    _poller: AbortOnDrop,
    watch: KeepAliveWatch,
    check: BrokerCheck,
    connected_at: Instant,
    /// Every publish handed to rumqttc until it is settled.
    delivery: Delivery<SentKind>,
    /// Records taken from the outbox and not handed to rumqttc yet: a suspect waits here
    /// until it can go alone (see `quarantine`), and what was taken after it waits behind.
    held: VecDeque<Record>,
    subscriptions: Subscriptions,
    /// Our subscription to commands waits for its SUBACK.
    commands_pending: bool,
    birth_written_at: Option<Instant>,
    birth_sent: bool,
    birth_acked: bool,
    offline_acked: bool,
    /// The orderly goodbye publishes our own `offline`: not a stale will.
    goodbye_started: bool,
    stale_will_answered: Option<Instant>,
    health_pacer: HealthPacer,
}

impl<'a> Session<'a> {
    /// Connects, runs the session until it ends, and reports how.
    async fn connect(
        Dial { settings, server }: Dial<'a>,
        outbox: &'a Outbox,
        health: &'a Health,
        link: &mut Link,
        memory: &'a mut Memory,
        shutdown: &CancellationToken,
        beat: &crate::health::Beat,
    ) -> SessionEnd {
        let failed =
            |diagnosis| SessionEnd::Failed(Failure::before_connack(diagnosis, Instant::now()));
        health.set_link(|l| l.state = LinkState::Connecting);
        let options = match settings.mqtt_options(server) {
            Ok(o) => o,
            Err(e) => return failed(diagnose::password_file(&e)),
        };
        let mut eventloop = EventLoop::new(options, UNUSED_REQUEST_CHANNEL);
        // rumqttc's timeout (whole seconds) for connecting; each flush later gets 1.5 x KA
        // from our driver, so a write blocked on a dead link fails instead of hanging.
        let connect_secs = settings.cfg.connect_timeout.as_secs_f64().ceil() as u64;
        eventloop
            .network_options
            .set_connection_timeout(connect_secs.max(1));
        // Our driver gathers each turn's publishes into one write: Nagle's algorithm would
        // only hold that write back for the broker's delayed ACK (40 ms on Linux), which is
        // what a command's result waited for.
        eventloop.network_options.set_tcp_nodelay(true);

        let sockets_before = user_timeout::snapshot();
        let connack = tokio::select! {
            r = tokio::time::timeout(settings.cfg.connect_timeout, eventloop.poll()) => r,
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        match connack {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => return failed(diagnose::not_connack(&other, settings.target(server))),
            Ok(Err(e)) => return failed(diagnose::connection_error(&e, settings.target(server))),
            Err(_) => {
                return failed(diagnose::no_connack(
                    settings.cfg.connect_timeout,
                    settings.target(server),
                ))
            }
        }
        let now = Instant::now();
        let user_timeout = settings.keep_alive.mul_f64(1.5);
        let port = settings.servers[server].port;
        let broker_sockets = user_timeout::apply_since(&sockets_before, port, user_timeout);
        if broker_sockets.is_empty() {
            tracing::debug!("could not find the broker socket to set TCP_USER_TIMEOUT on");
        }
        link.on_connected(now);
        let reconnects = link.reconnects();
        health.set_link(|l| {
            l.state = LinkState::Up;
            l.reconnects = reconnects;
            l.server = Some(settings.brokers[server].clone());
            // Each connection is checked afresh: it may reach another broker, another ACL.
            l.routing = ROUTING_UNCHECKED.to_string();
        });
        tracing::debug!(broker = %settings.brokers[server], reconnects, "CONNACK");

        let check = if memory.skip_check {
            BrokerCheck::skipped()
        } else {
            BrokerCheck::subscribed(now)
        };
        let (tx, rx) = mpsc::channel(64);
        let (client, driver) = event_loop::start(
            eventloop,
            settings.keep_alive,
            user_timeout,
            AckPacing::new(&broker_sockets),
            tx,
        );
        let poller = AbortOnDrop(tokio::spawn(driver));
        let mut session = Session {
            settings,
            server,
            outbox,
            health,
            memory,
            client,
            events: rx,
            _poller: poller,
            watch: KeepAliveWatch::new(settings.keep_alive, now),
            check,
            connected_at: now,
            delivery: Delivery::new(RECORD_WINDOW),
            held: VecDeque::new(),
            subscriptions: Subscriptions::default(),
            commands_pending: false,
            birth_written_at: None,
            birth_sent: false,
            birth_acked: false,
            offline_acked: false,
            goodbye_started: false,
            stale_will_answered: None,
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
            .delivery
            .unsettled()
            .filter_map(|(sent, written_at)| match sent {
                SentKind::Record { record, .. } => Some(UnackedRecord {
                    id: record.seq,
                    topic: record.topic.to_string(),
                    bytes: record.payload.len(),
                    written_at,
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
            awaiting_suback: if self.check.subscribing() {
                Some(Purpose::BrokerCheck)
            } else if self.commands_pending {
                Some(Purpose::Commands)
            } else {
                None
            },
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
                .subscribe(&self.settings.status_topic, QoS::AtMostOnce);
            self.subscriptions.asked(Purpose::BrokerCheck);
        }
        let every = self.settings.cfg.health_interval;
        let mut health_timer = tokio::time::interval_at(Instant::now() + every, every);
        let mut health_check = crate::ticks::aligned_interval(HEALTH_CHECK_EVERY);
        loop {
            self.follow_check()?;
            self.fill_window()?;
            self.client
                .submit()
                .map_err(|e| diagnose::client_refused(&e))?;
            beat.tick();
            let check_due = self.check.deadline();
            let ha_birth_due = self
                .memory
                .discovery
                .as_ref()
                .and_then(Discovery::birth_deadline);
            let can_take = self.birth_sent
                && self.held.is_empty()
                && self.memory.quarantine.probe().is_none()
                && self.delivery.room() > 0;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                ev = self.events.recv() => {
                    self.on_event(ev)?;
                    // What else already came is handled in the same turn: one fill of the
                    // window and one batch for the driver for all of it.
                    for _ in 0..EVENTS_PER_TURN {
                        let Ok(ev) = self.events.try_recv() else {
                            break;
                        };
                        self.on_event(Some(ev))?;
                    }
                }
                _ = tokio::time::sleep_until(self.watch.deadline()) => {
                    return Err(diagnose::keep_alive(self.watch.allowance()));
                }
                _ = tokio::time::sleep_until(check_due.unwrap_or_else(Instant::now)),
                    if check_due.is_some() => self.check.on_deadline(Instant::now()),
                _ = tokio::time::sleep_until(ha_birth_due.unwrap_or_else(Instant::now)),
                    if ha_birth_due.is_some() => {
                    if let Some(discovery) = &mut self.memory.discovery {
                        homeassistant::birth_due(discovery, &mut self.memory.republish);
                    }
                }
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
            self.subscribe_commands()?;
            if let Some(discovery) = &mut self.memory.discovery {
                homeassistant::subscribe(&mut self.client, discovery, &mut self.subscriptions)?;
            }
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
            if let Some(discovery) = &mut self.memory.discovery {
                homeassistant::check_done(
                    &mut self.client,
                    discovery,
                    &mut self.memory.republish,
                    routing == Routing::Delivered,
                )?;
            }
        }
        Ok(())
    }

    /// Asks for commands, after the broker check's SUBACK (so a broker that closes the
    /// connection over a subscription tells us which one it refused) and before the birth
    /// (so a controller that sees `online` knows its commands reach us). Every connection
    /// subscribes afresh with a clean session: no command queued while we were away is
    /// ever handed over.
    fn subscribe_commands(&mut self) -> Result<(), Diagnosis> {
        if self.settings.commands.is_none() {
            return Ok(());
        }
        if let Some(until) = self.memory.commands_barred_until {
            if Instant::now() < until {
                tracing::debug!("not subscribing to commands: the broker closed the connection over that subscription before");
                return Ok(());
            }
            self.memory.commands_barred_until = None;
        }
        self.client
            .subscribe(&self.settings.command_filter, QoS::AtLeastOnce);
        self.subscriptions.asked(Purpose::Commands);
        self.commands_pending = true;
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
        let settings = self.settings;
        let Some(text) = verdict.complaint(&settings.cfg.prefix, &settings.status_topic) else {
            if self.memory.routing.resolved().is_some() {
                tracing::info!("the broker delivers our messages again");
            }
            self.health.set_link(|l| l.routing = ROUTING_OK.to_string());
            return;
        };
        match self.memory.routing.occurred(verdict, Instant::now()) {
            Say::Nothing => tracing::debug!("{text}"),
            Say::New | Say::Reminder { .. } => tracing::warn!("{text}"),
        }
        let summary = match verdict {
            Routing::NotChecked => format!("unchecked: {text}"),
            _ => format!("not delivered: {text}"),
        };
        self.health.set_link(|l| l.routing = summary);
    }

    /// Shutdown with the link up: publish what is queued (bounded), then the retained
    /// `offline` (the broker sends no will on a clean DISCONNECT), then DISCONNECT.
    async fn goodbye(&mut self) {
        self.goodbye_started = true;
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
        self.client.disconnect();
        if self.client.submit().is_err() {
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
        if self.client.submit().is_err() {
            return false;
        }
        let deadline = until.min(self.watch.deadline());
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(ev) => self.on_event(ev).is_ok(),
            Err(_) => false,
        }
    }

    fn on_event(&mut self, event: Option<Result<Event, ConnectionError>>) -> Result<(), Diagnosis> {
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                return Err(diagnose::connection_error(
                    &e,
                    self.settings.target(self.server),
                ))
            }
            None => return Err(diagnose::event_loop_stopped()),
        };
        let now = Instant::now();
        match event {
            Event::Incoming(packet) => {
                self.watch.on_inbound(now);
                match packet {
                    Packet::PubAck(ack) => match self.delivery.acknowledged(ack.pkid) {
                        Acked::Settled(sent) => self.settle(sent),
                        Acked::Unknown => tracing::debug!(
                            pkid = ack.pkid,
                            "ignored a PUBACK for a packet id no publish of ours waits on (a \
                             duplicate?)"
                        ),
                    },
                    Packet::SubAck(ack) => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                        match self.subscriptions.acknowledged(ack.pkid) {
                            Some(Purpose::BrokerCheck) => self.check.on_suback(granted, now),
                            Some(Purpose::Commands) => {
                                self.commands_pending = false;
                                self.on_commands_suback(granted);
                            }
                            Some(Purpose::Discovery) => homeassistant::on_suback(granted),
                            None => {}
                        }
                    }
                    Packet::Publish(p) if p.topic == self.settings.status_topic => {
                        self.check.on_own_status(p.retain);
                        if p.payload.as_ref() == topic::OFFLINE.as_bytes() {
                            self.on_stale_will(now)?;
                        }
                    }
                    Packet::Publish(p) => self.on_publish(&p),
                    _ => {}
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                match self
                    .delivery
                    .written(pkid, now)
                    .map_err(diagnose::mismatch)?
                {
                    Written::Settled(sent) => self.settle(sent),
                    Written::AwaitingAck(SentKind::Birth) => self.birth_written_at = Some(now),
                    Written::AwaitingAck(_) => {}
                }
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => self.subscriptions.written(pkid),
            Event::Outgoing(_) => {}
        }
        Ok(())
    }

    /// `offline` on our status topic while this connection is up and its birth was
    /// acknowledged: the last will of an earlier connection, published after this one's
    /// birth (a cluster node cleaning up the session of a node that died) or by another
    /// client. Left alone it would say `offline` about a working gateway until the next
    /// reconnect, so the birth goes out again (at most once per `STALE_WILL_GAP`).
    fn on_stale_will(&mut self, now: Instant) -> Result<(), Diagnosis> {
        if !self.birth_acked || self.goodbye_started {
            return Ok(());
        }
        if self
            .stale_will_answered
            .is_some_and(|at| now.saturating_duration_since(at) < STALE_WILL_GAP)
        {
            return Ok(());
        }
        self.stale_will_answered = Some(now);
        tracing::info!(
            "`offline` appeared on our status topic while the link is up (a will published \
             late, or another client): saying `online` again"
        );
        let status = self.settings.status_topic.clone();
        self.publish_own(
            &status,
            topic::ONLINE.as_bytes(),
            QoS::AtLeastOnce,
            SentKind::Other,
        )
    }

    fn on_commands_suback(&mut self, granted: bool) {
        if granted {
            tracing::debug!(filter = %self.settings.command_filter, "subscribed to commands");
        } else {
            tracing::warn!(
                filter = %self.settings.command_filter,
                "the broker refused our subscription to commands: writes from MQTT cannot \
                 reach this gateway; give its MQTT user read access to {} in the broker's ACL",
                self.settings.command_filter
            );
        }
    }

    /// A message on one of our subscriptions (other than our own status): a command goes to
    /// the router, anything else to discovery, which ignores what is not its own.
    fn on_publish(&mut self, publish: &rumqttc::Publish) {
        let topic = publish.topic.as_str();
        if let Some(commands) = &self.settings.commands {
            if let Some((device, point)) = topic::command_target(&self.settings.cfg.prefix, topic) {
                commands.command(device, point, &publish.payload, publish.retain);
                return;
            }
        }
        if let Some(discovery) = &mut self.memory.discovery {
            homeassistant::on_publish(
                discovery,
                self.outbox,
                &publish.topic,
                &publish.payload,
                publish.retain,
            );
        }
    }

    /// A publish is done: acknowledged (QoS 1) or written (QoS 0).
    fn settle(&mut self, sent: SentKind) {
        match sent {
            SentKind::Record { record, retained } => {
                self.outbox.ack(record.seq);
                self.memory.quarantine.acknowledged(record.seq);
                if retained {
                    self.memory
                        .republish
                        .record_acknowledged(&record.topic, &record.payload);
                }
            }
            SentKind::Republish(topic) => self.memory.republish.acknowledged(&topic),
            SentKind::Birth => {
                self.birth_acked = true;
                self.memory.failures.resolved();
                tracing::info!(
                    broker = %self.settings.brokers[self.server],
                    reconnects = self.health.link().reconnects,
                    queued = self.outbox.depth(),
                    "MQTT link up"
                );
            }
            SentKind::Offline => self.offline_acked = true,
            SentKind::Other => {}
        }
    }

    /// Hands rumqttc what fits in the window: republished retained state first (it must not
    /// wait behind a backlog), then outbox records, a suspect only alone.
    fn fill_window(&mut self) -> Result<(), Diagnosis> {
        if !self.birth_sent {
            return Ok(());
        }
        while self.delivery.room() > 0 {
            let Some((topic, payload)) = self.memory.republish.next() else {
                break;
            };
            self.client
                .publish(&topic, self.settings.qos, true, payload);
            self.delivery.requested(
                SentKind::Republish(topic),
                settles(self.settings.qos),
                Counted::InWindow,
            );
        }
        loop {
            if self.memory.quarantine.probe().is_some() {
                return Ok(());
            }
            if self.held.is_empty() {
                let room = self.delivery.room();
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
                if self.delivery.room() == 0 {
                    return Ok(());
                }
                let suspect = self.memory.quarantine.is_suspect(front.seq);
                // A suspect goes only alone: nothing of ours on the wire before or beside it.
                if suspect && !self.delivery.is_idle() {
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
        if let Some(why) = delivery::too_large(&record.topic, record.payload.len()) {
            let culprit = GiveUp {
                id: record.seq,
                topic: &record.topic,
                bytes: record.payload.len(),
                why,
            };
            give_up(self.outbox, self.health, self.memory, &culprit);
            self.memory.quarantine.acknowledged(record.seq);
            return Ok(false);
        }
        // Retained only while no newer reading of the same topic exists, so a replayed
        // record never overwrites a newer retained value.
        let retain = self.outbox.is_newest(&record)
            && topic::retained_when_newest(&self.settings.cfg.prefix, &record.topic);
        self.client.publish(
            &record.topic,
            self.settings.qos,
            retain,
            record.payload.clone(),
        );
        if retain {
            self.memory.republish.record_sent(&record.topic);
        }
        self.delivery.requested(
            SentKind::Record {
                record,
                retained: retain,
            },
            settles(self.settings.qos),
            Counted::InWindow,
        );
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
        self.client.publish(topic, qos, true, payload.to_vec());
        self.delivery.requested(what, settles(qos), Counted::Beside);
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
