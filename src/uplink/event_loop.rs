//! One connection's MQTT I/O on a task of its own, for `mqtt`: rumqttc's connection state
//! (`MqttState`: packet ids, in-flight slots, pings) and its codec (`Network`), driven by our
//! loop once the CONNACK is in; events go to the session over a bounded channel, so the
//! session can `select!` on them without ever cancelling a write halfway.
//!
//! Why not `EventLoop::poll` past the CONNACK: rumqttc 0.25 takes one request per turn and
//! writes and flushes the socket for each (its `max_request_batch` is parsed but unused),
//! so every publish cost a `write` syscall and a task wake-up, half the agent's CPU at
//! 120 readings/s. Here the session hands over every request of a turn as one batch
//! (`Client::submit`), they are encoded back to back into the codec's buffer and go out in
//! one write (the codec flushes by itself every 8 KiB). rumqttc's packet types, state and
//! codec stay: only the scheduling of writes is ours.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    ConnectionError, Disconnect, Event, EventLoop, MqttState, PingReq, Publish, QoS, Request,
    Subscribe, Unsubscribe,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack_pacing::AckPacing;
use super::delivery::Settles;

/// Batches of requests between the session and the driver. When it is full (the driver is
/// busy handing events over) the session keeps gathering and hands the lot over later.
const BATCHES: usize = 64;

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When a publish at `qos` is done.
pub(super) fn settles(qos: QoS) -> Settles {
    match qos {
        QoS::AtMostOnce => Settles::OnWrite,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Settles::OnPubAck,
    }
}

/// The driver stopped taking requests: its connection failed (the session hears why from
/// the events) or ended.
#[derive(Debug, thiserror::Error)]
#[error("the connection's task has stopped taking requests")]
pub(super) struct DriverGone;

/// The session's handle on the connection: requests are gathered during a turn of the
/// session and handed over together by `submit`, in the order they were made.
pub(super) struct Client {
    requests: mpsc::Sender<Vec<Request>>,
    gathered: Vec<Request>,
}

impl Client {
    /// Queues a publish. A record's payload comes as the outbox's `Bytes`, shared rather
    /// than copied; our own messages as a `Vec`.
    pub(super) fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
    ) {
        let mut publish = Publish::from_bytes(topic, qos, payload.into());
        publish.retain = retain;
        self.gathered.push(Request::Publish(publish));
    }

    pub(super) fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.gathered
            .push(Request::Subscribe(Subscribe::new(filter, qos)));
    }

    pub(super) fn unsubscribe(&mut self, filter: &str) {
        self.gathered
            .push(Request::Unsubscribe(Unsubscribe::new(filter)));
    }

    pub(super) fn disconnect(&mut self) {
        self.gathered.push(Request::Disconnect(Disconnect));
    }

    /// Hands what was gathered to the driver; call before waiting on anything. With the
    /// channel full the requests stay gathered, in order, for the next call: the driver is
    /// then busy with earlier batches, and each one it writes brings the session an event,
    /// hence another call.
    pub(super) fn submit(&mut self) -> Result<(), DriverGone> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.gathered);
        match self.requests.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.gathered = batch;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DriverGone),
        }
    }
}

/// Takes over `eventloop` right after its CONNACK: returns the session's handle and the
/// driver to spawn.
pub(super) fn start(
    eventloop: EventLoop,
    keep_alive: Duration,
    flush_timeout: Duration,
    acks: AckPacing,
    events: mpsc::Sender<Result<Event, ConnectionError>>,
) -> (Client, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(BATCHES);
    let client = Client {
        requests: tx,
        gathered: Vec::new(),
    };
    let driver = Driver {
        eventloop,
        requests: rx,
        backlog: VecDeque::new(),
        events,
        keep_alive,
        flush_timeout,
        acks,
    };
    (client, driver.run())
}

struct Driver {
    eventloop: EventLoop,
    requests: mpsc::Receiver<Vec<Request>>,
    /// Requests taken from the channel that wait for an in-flight slot.
    backlog: VecDeque<Request>,
    events: mpsc::Sender<Result<Event, ConnectionError>>,
    keep_alive: Duration,
    /// A write that cannot finish in this long is a dead link (1.5 x keep-alive).
    flush_timeout: Duration,
    acks: AckPacing,
}

impl Driver {
    /// Runs until the connection's first error, which it forwards, or until the session
    /// drops its handle or its receiver.
    async fn run(mut self) {
        if let Err(e) = self.serve().await {
            let _ = self.events.send(Err(e)).await;
        }
    }

    async fn serve(&mut self) -> Result<(), ConnectionError> {
        let max_inflight = self.eventloop.mqtt_options.inflight();
        let EventLoop { state, network, .. } = &mut self.eventloop;
        let network = network.as_mut().ok_or(ConnectionError::RequestsDone)?;
        // As rumqttc: a ping every keep-alive whatever else flows (the session's watch
        // decides when silence means a dead link).
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.keep_alive,
            self.keep_alive.max(Duration::from_millis(1)),
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut wrote = false;
            while may_send(state, max_inflight) {
                let Some(request) = self.backlog.pop_front() else {
                    break;
                };
                if let Some(packet) = state.handle_outgoing_packet(request)? {
                    network.write(packet).await?;
                    wrote = true;
                }
            }
            if wrote {
                self.acks.before_burst();
                flushed(network.flush(), self.flush_timeout).await?;
            }
            while let Some(event) = state.events.pop_front() {
                if self.events.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            tokio::select! {
                read = network.readb(state) => {
                    read?;
                    // Acknowledgements of what came in (PUBACKs for commands) go at once.
                    flushed(network.flush(), self.flush_timeout).await?;
                }
                batch = self.requests.recv(), if self.backlog.is_empty() => match batch {
                    Some(batch) => {
                        self.backlog.extend(batch);
                        while let Ok(more) = self.requests.try_recv() {
                            self.backlog.extend(more);
                        }
                    }
                    None => return Ok(()),
                },
                _ = ping.tick(), if !self.keep_alive.is_zero() => {
                    if let Some(packet) = state.handle_outgoing_packet(Request::PingReq(PingReq))? {
                        network.write(packet).await?;
                    }
                    flushed(network.flush(), self.flush_timeout).await?;
                }
            }
        }
    }
}

fn may_send(state: &MqttState, max_inflight: u16) -> bool {
    state.inflight() < max_inflight && state.collision.is_none()
}

/// A flush that must finish within `within` (rumqttc's `Network` has no name we can use).
async fn flushed(
    flush: impl std::future::Future<Output = Result<(), rumqttc::StateError>>,
    within: Duration,
) -> Result<(), ConnectionError> {
    match tokio::time::timeout(within, flush).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(ConnectionError::FlushTimeout),
    }
}
