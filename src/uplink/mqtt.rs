//! The MQTT link: the only module that imports rumqttc.
//!
//! Owns the connection to the broker: connect with our own timeout and backoff, the retained
//! `online` birth after every CONNACK, the keep-alive verdict (1.5 x KA, see `state`), draining
//! the outbox with a bounded send window, pairing PUBACKs with record sequence numbers, the
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

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::{HealthFacts, HealthPacer, KeepAliveWatch, Link};
use super::topic::{self, OutboxFacts};
use super::user_timeout;
use crate::config::Mqtt;
use crate::health::{Health, HealthReport, LinkState};
use crate::queue::Outbox;

/// Records handed to rumqttc and not yet acknowledged.
const RECORD_WINDOW: usize = 64;
/// rumqttc's own in-flight limit: above our window plus the birth, health and `offline`.
const RUMQTT_INFLIGHT: u16 = 100;
/// Request channel between our client handle and the event loop.
const REQUEST_CHANNEL: usize = 128;
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
}

/// How one connection ended.
enum SessionEnd {
    Shutdown,
    /// Lost or never established; the reason is for logs and the health topic.
    Failed {
        reason: String,
        was_up: bool,
    },
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
        tls,
        cfg,
    };
    let mut link = Link::new(
        settings.cfg.backoff_initial,
        settings.cfg.backoff_max,
        fastrand::Rng::new(),
    );
    // The loop ticks on every broker event (at least one per keep-alive while up), and
    // between connection attempts, which may be a backoff plus a connect timeout apart.
    let beat = health.register(
        "uplink",
        settings.cfg.backoff_max
            + settings.cfg.connect_timeout
            + settings.keep_alive * 3
            + HEALTH_EVERY,
    );
    let mut down_logged = false;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        beat.tick();
        let end = Session::connect(&settings, &outbox, &health, &mut link, &shutdown, &beat).await;
        let requeued = outbox.requeue_inflight();
        let (reason, was_up) = match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Failed { reason, was_up } => (reason, was_up),
        };
        let delay = link.on_down(Instant::now());
        health.set_link(|l| {
            l.state = LinkState::Down;
            l.last_error = Some(reason.clone());
        });
        if was_up || !down_logged {
            tracing::info!(
                requeued,
                "MQTT link down: {reason}; reconnecting in {:.1}s",
                delay.as_secs_f64()
            );
            down_logged = true;
        } else {
            tracing::debug!(
                "MQTT connect failed: {reason}; retrying in {:.1}s",
                delay.as_secs_f64()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// One entry per publish handed to rumqttc, in request order.
#[derive(Debug, Clone, Copy)]
struct Sent {
    what: SentKind,
    qos: QoS,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SentKind {
    Record(u64),
    Offline,
    /// Birth and health: nobody waits for them.
    Other,
}

struct Session<'a> {
    settings: &'a Settings,
    outbox: &'a Outbox,
    health: &'a Health,
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    /// Dropping it drops the event loop with its socket and whatever rumqttc still held;
    /// the caller requeues our unacknowledged records.
    _poller: AbortOnDrop,
    watch: KeepAliveWatch,
    /// Publishes requested but not yet seen as `Outgoing::Publish`.
    unwritten: VecDeque<Sent>,
    /// QoS 1 publishes written, by packet id, waiting for their PUBACK.
    unacked: HashMap<u16, Sent>,
    records_in_window: usize,
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
        shutdown: &CancellationToken,
        beat: &crate::health::Beat,
    ) -> SessionEnd {
        let failed = |reason: String| SessionEnd::Failed {
            reason,
            was_up: false,
        };
        health.set_link(|l| l.state = LinkState::Connecting);
        let options = match mqtt_options(settings) {
            Ok(o) => o,
            Err(e) => return failed(format!("{e:#}")),
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
            Ok(Ok(other)) => return failed(format!("expected CONNACK, got {other:?}")),
            Ok(Err(e)) => return failed(describe(&e, settings)),
            Err(_) => {
                return failed(format!(
                    "no CONNACK from {}:{} within {:?} (mqtt.connect_timeout)",
                    settings.cfg.host, settings.cfg.port, settings.cfg.connect_timeout
                ))
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
        });
        tracing::info!(
            broker = %format!("{}:{}", settings.cfg.host, settings.cfg.port),
            reconnects,
            queued = outbox.depth(),
            "MQTT link up"
        );

        let (tx, rx) = mpsc::channel(64);
        let poller = AbortOnDrop(tokio::spawn(drive(eventloop, tx)));
        let mut session = Session {
            settings,
            outbox,
            health,
            client,
            events: rx,
            _poller: poller,
            watch: KeepAliveWatch::new(settings.keep_alive, now),
            unwritten: VecDeque::new(),
            unacked: HashMap::new(),
            records_in_window: 0,
            offline_acked: false,
            health_pacer: HealthPacer::new(),
        };
        match session.serve(shutdown, beat).await {
            Ok(()) => {
                session.goodbye().await;
                SessionEnd::Shutdown
            }
            Err(reason) => SessionEnd::Failed {
                reason,
                was_up: true,
            },
        }
    }

    /// Birth, then the outbox, until shutdown (`Ok`) or the link fails (`Err(reason)`).
    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        beat: &crate::health::Beat,
    ) -> Result<(), String> {
        // The birth goes first after every CONNACK: on a session takeover mosquitto has just
        // published our previous connection's will.
        let status = self.settings.status_topic.clone();
        self.publish_own(
            &status,
            topic::ONLINE.as_bytes(),
            QoS::AtLeastOnce,
            SentKind::Other,
        )?;
        self.publish_health(self.health.report())?;
        let mut health_timer =
            tokio::time::interval_at(Instant::now() + HEALTH_EVERY, HEALTH_EVERY);
        let mut health_check =
            tokio::time::interval_at(Instant::now() + HEALTH_CHECK_EVERY, HEALTH_CHECK_EVERY);
        health_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.fill_window()?;
            beat.tick();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                ev = self.events.recv() => self.on_event(ev)?,
                _ = tokio::time::sleep_until(self.watch.deadline()) => {
                    return Err(self.keep_alive_verdict());
                }
                _ = self.outbox.wait_queued(), if self.records_in_window < RECORD_WINDOW => {}
                _ = health_timer.tick() => self.publish_health(self.health.report())?,
                _ = health_check.tick() => {
                    let report = self.health.report();
                    if self.health_pacer.due(&self.health_facts(&report), Instant::now()) {
                        self.publish_health(report)?;
                    }
                }
            }
        }
    }

    fn keep_alive_verdict(&self) -> String {
        format!(
            "nothing received from the broker for {:.1}s (1.5 x keep-alive)",
            self.watch.allowance().as_secs_f64()
        )
    }

    /// Shutdown with the link up: publish what is queued (bounded), then the retained
    /// `offline` (the broker sends no will on a clean DISCONNECT), then DISCONNECT.
    async fn goodbye(&mut self) {
        let drain_until = Instant::now() + DRAIN_BUDGET;
        while self.outbox.depth() > 0 && Instant::now() < drain_until {
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

    fn on_event(&mut self, event: Option<Result<Event, ConnectionError>>) -> Result<(), String> {
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(describe(&e, self.settings)),
            None => return Err("the MQTT event loop stopped".into()),
        };
        match event {
            Event::Incoming(packet) => {
                self.watch.on_inbound(Instant::now());
                if let Packet::PubAck(ack) = packet {
                    if let Some(sent) = self.unacked.remove(&ack.pkid) {
                        self.settle(sent);
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let Some(sent) = self.unwritten.pop_front() else {
                    return Err("rumqttc wrote a publish we did not request".into());
                };
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
            SentKind::Record(seq) => {
                self.outbox.ack(seq);
                self.records_in_window = self.records_in_window.saturating_sub(1);
            }
            SentKind::Offline => self.offline_acked = true,
            SentKind::Other => {}
        }
    }

    /// Hands queued records to rumqttc up to the window.
    fn fill_window(&mut self) -> Result<(), String> {
        let room = RECORD_WINDOW.saturating_sub(self.records_in_window);
        if room == 0 {
            return Ok(());
        }
        for record in self.outbox.take(room) {
            // Retained only while no newer reading of the same topic exists, so a replayed
            // record never overwrites a newer retained value.
            let retain = self.outbox.is_newest(&record);
            self.client
                .try_publish(&record.topic, self.settings.qos, retain, record.payload)
                .map_err(|e| format!("cannot hand a reading to the MQTT client: {e}"))?;
            self.unwritten.push_back(Sent {
                what: SentKind::Record(record.seq),
                qos: self.settings.qos,
            });
            self.records_in_window += 1;
        }
        Ok(())
    }

    /// Our own retained messages: birth, health, `offline`.
    fn publish_own(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        what: SentKind,
    ) -> Result<(), String> {
        self.client
            .try_publish(topic, qos, true, payload.to_vec())
            .map_err(|e| format!("cannot hand a message to the MQTT client: {e}"))?;
        self.unwritten.push_back(Sent { what, qos });
        Ok(())
    }

    fn health_facts(&self, report: &HealthReport) -> HealthFacts {
        HealthFacts {
            link: report.link.state,
            troubles: report.troubles(),
            dropped: self.outbox.dropped(),
        }
    }

    fn publish_health(&mut self, report: HealthReport) -> Result<(), String> {
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
    o.set_max_packet_size(256 * 1024, 256 * 1024);
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

fn describe(e: &ConnectionError, settings: &Settings) -> String {
    let broker = format!("{}:{}", settings.cfg.host, settings.cfg.port);
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "broker {broker} refused the connection ({code:?}): check mqtt.username, \
             mqtt.password_file and mqtt.client_id"
        ),
        ConnectionError::Io(io) => format!("network error with {broker}: {io}"),
        ConnectionError::Tls(tls) => format!("TLS with {broker} failed: {tls}"),
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            format!("writing to {broker} timed out")
        }
        other => format!("MQTT error with {broker}: {other}"),
    }
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
