//! The uplink's side of Home Assistant discovery: the subscriptions it adds to a connection,
//! what it does with a message on them, and putting the configs back after Home
//! Assistant's birth. The decisions are `crate::homeassistant::Discovery`'s; the configs
//! travel as outbox records (published at start, `app`) and through the republish set, so
//! nothing here publishes a config itself: clears go into the outbox, births into the
//! republish set.

use rumqttc::{AsyncClient, QoS};

use super::diagnose::{self, Diagnosis};
use super::republish::RepublishSet;
use crate::homeassistant::{Discovery, Incoming};
use crate::queue::Outbox;

/// Subscribes to Home Assistant's status and, on the first connection of a run, to this
/// gateway's discovery topics. Called when the birth goes out, after the broker check's own
/// SUBACK (so the check never takes one of these for its own).
pub fn subscribe(client: &AsyncClient, discovery: &mut Discovery) -> Result<(), Diagnosis> {
    for topic in discovery.subscriptions() {
        client
            .try_subscribe(topic, QoS::AtMostOnce)
            .map_err(|e| diagnose::client_refused(&e))?;
    }
    Ok(())
}

/// The broker check is over (`routed`: our echo came back): the sweep's subscription goes.
pub fn check_done(
    client: &AsyncClient,
    discovery: &mut Discovery,
    routed: bool,
) -> Result<(), Diagnosis> {
    if let Some(filter) = discovery.check_done(routed) {
        client
            .try_unsubscribe(filter)
            .map_err(|e| diagnose::client_refused(&e))?;
    }
    Ok(())
}

/// A message on a discovery subscription: a stale config is cleared through the outbox
/// (an empty retained record), a birth is remembered.
pub fn on_publish(
    discovery: &mut Discovery,
    outbox: &Outbox,
    topic: &str,
    payload: &[u8],
    retain: bool,
) {
    let now = tokio::time::Instant::now();
    if let Incoming::Clear(topic) = discovery.on_message(topic, payload, retain, now) {
        tracing::info!(
            topic,
            "clearing the Home Assistant discovery config of a point no longer in the map"
        );
        outbox.push(topic, crate::model::unix_ms_now(), Vec::new());
    }
}

/// Home Assistant's birth settled: every config the broker acknowledged goes again, ahead
/// of any backlog (one not acknowledged yet is still in the outbox, on its way).
pub fn birth_due(discovery: &mut Discovery, republish: &mut RepublishSet) {
    if !discovery.take_birth_due(tokio::time::Instant::now()) {
        return;
    }
    let queued = republish.lost(|t| discovery.owns(t));
    tracing::info!(
        configs = queued,
        "Home Assistant came online: publishing the discovery configs again"
    );
}
