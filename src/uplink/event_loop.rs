//! rumqttc's event loop on a task of its own, for `mqtt`: polled until its first error and
//! forwarded over a bounded channel, so the session can `select!` on events without ever
//! cancelling a `poll()` halfway through a write; aborted when the session drops it.

use rumqttc::{ConnectionError, Event, EventLoop, QoS};
use tokio::sync::mpsc;

use super::delivery::Settles;

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

/// Polls one connection's event loop until its first error, which ends the connection:
/// `poll()` is never called again after an error (it would reconnect at once, without our
/// backoff).
pub(super) async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}
