//! The uplink's side of Home Assistant discovery: the subscriptions it adds to a connection,
//! what it does with a message on them, and putting the configs back after Home
//! Assistant's birth. The decisions are `crate::homeassistant::Discovery`'s; nothing here
//! publishes itself: configs go into the republish set (retained, PUBACKed, resent after a
//! lost connection, ahead of any backlog), clears into the outbox.

use rumqttc::QoS;

use super::diagnose::Diagnosis;
use super::event_loop::Client;
use super::republish::RepublishSet;
use super::subscriptions::{Purpose, Subscriptions};
use crate::buffer::Outbox;
use crate::homeassistant::{Discovery, Incoming};

/// Subscribes to Home Assistant's status and, on the first connection of a run, to this
/// gateway's discovery topics. Called when the birth goes out, after the broker check's own
/// SUBACK (so the check never takes one of these for its own).
pub fn subscribe(
    client: &mut Client,
    discovery: &mut Discovery,
    subscriptions: &mut Subscriptions,
) -> Result<(), Diagnosis> {
    for topic in discovery.subscriptions() {
        client.subscribe(&topic, QoS::AtMostOnce);
        subscriptions.asked(Purpose::Discovery);
    }
    Ok(())
}

/// The broker answered one of discovery's subscriptions. A refusal is an ACL matter: said at
/// warn (mosquitto grants what its ACL denies, so this comes from stricter brokers; the configs
/// still go out: only Home Assistant's birth and the sweep of stale configs are not heard).
pub fn on_suback(granted: bool) {
    if !granted {
        tracing::warn!(
            "the broker refused a Home Assistant discovery subscription: Home Assistant's \
             restarts and stale configs of this gateway cannot be seen; give the gateway's \
             MQTT user read access to the discovery prefix"
        );
    }
}

/// The broker check is over (`routed`: our echo came back): the sweep's subscription goes,
/// and the first time in a run the configs the broker does not hold as they are go out.
pub fn check_done(
    client: &mut Client,
    discovery: &mut Discovery,
    republish: &mut RepublishSet,
    routed: bool,
) -> Result<(), Diagnosis> {
    let after = discovery.check_done(routed);
    if let Some(filter) = after.unsubscribe {
        client.unsubscribe(&filter);
    }
    for config in &after.on_broker {
        republish.remember(&config.topic, &config.payload);
    }
    for config in &after.publish {
        republish.publish(&config.topic, &config.payload);
    }
    if !after.publish.is_empty() || !after.on_broker.is_empty() {
        tracing::info!(
            published = after.publish.len(),
            on_broker = after.on_broker.len(),
            "Home Assistant discovery: publishing {} configs, {} already on the broker as they are",
            after.publish.len(),
            after.on_broker.len()
        );
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
