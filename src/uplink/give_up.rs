//! Acting on `quarantine`'s verdicts: a record the broker keeps closing the connection over
//! (or one too large to send) leaves the outbox for good, counted as dropped, logged once at
//! error, and shown on the health topic.

use rumqttc::QoS;

use super::quarantine::GiveUp;
use super::session_end::Failure;
use super::settings::{Memory, Settings};
use crate::buffer::Outbox;
use crate::health::Health;

/// Gives up on the record the broker keeps closing the connection over, if one earned it
/// (see `quarantine`).
pub(super) fn quarantine_after(
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
    if let Some(culprit) = failure.quarantined(&mut memory.quarantine) {
        give_up(outbox, health, memory, &culprit);
    }
}

/// Drops the in-flight record from the outbox for good, counted as dropped, logged, and on
/// the health topic.
pub(super) fn give_up(outbox: &Outbox, health: &Health, memory: &mut Memory, record: &GiveUp<'_>) {
    if !outbox.discard(record.id) {
        return;
    }
    memory.republish.record_given_up(record.topic);
    tracing::error!(
        topic = record.topic,
        bytes = record.bytes,
        "{}",
        record.log_text()
    );
    let summary = record.summary();
    health.set_link(|l| {
        l.quarantined += 1;
        l.last_quarantined = Some(summary);
    });
}
