//! The republish set: the retained state this gateway owns on the broker, kept so it can be
//! put back when a broker turns out to have lost it (restarted without persistence, a
//! failover to another broker).
//!
//! Owns one payload per retained topic we publish through the outbox (device statuses,
//! `meta`, the newest reading of each point, the newest batch of each device) and the list
//! of topics still to be republished. Of records it holds only what the broker
//! *acknowledged* (or, at QoS 0, what was written): a record that never made it (e.g. one
//! the broker refuses for its size) can never come back through here. Home Assistant
//! discovery configs (see below) are the exception: the map defines them, so they are held
//! from the moment they are handed over. No I/O, no clock, no rumqttc: `mqtt` feeds it
//! and drains it. The gateway's own `status` and `health` are not in it; they go out after
//! every CONNACK anyway.
//!
//! Rules that keep a republish from overwriting a newer retained value:
//! - A topic is taken from the pending list with the payload held *at that moment*, so a
//!   topic whose republish was lost with a connection goes out again with whatever is newest
//!   by then.
//! - A newer retained record of a topic handed to the broker makes its pending republish
//!   redundant ([`RepublishSet::record_sent`]): the outbox delivers that record, retained.
//!   Until its PUBACK the topic is not put on the pending list either: the payload held is
//!   older than that record, and republishing it behind the record would leave the older
//!   value retained (a broker found to have lost everything while a window of records was
//!   on the wire did exactly that).
//! - Records and republishes leave on one connection in the order they were handed over, and
//!   the broker applies them in that order, so the last retained value is the newest.
//!
//! Home Assistant discovery configs are retained state the gateway owns from its map, not
//! from readings: they enter here directly ([`RepublishSet::publish`], or
//! [`RepublishSet::remember`] for one the broker already holds as it is), and
//! [`RepublishSet::lost`] puts back a chosen part (the configs, when Home Assistant
//! restarts).

use std::collections::{HashMap, HashSet, VecDeque};

/// Newest acknowledged retained payload per topic, plus what is still to be republished.
#[derive(Debug, Default)]
pub struct RepublishSet {
    payloads: HashMap<String, Vec<u8>>,
    /// Topics waiting to be republished, oldest request first; `queued` mirrors it.
    pending: VecDeque<String>,
    queued: HashSet<String>,
    /// Topics republished on the current connection and not yet acknowledged.
    in_flight: HashSet<String>,
    /// Retained records handed over on the current connection and not yet acknowledged,
    /// per topic (zero once all were: the key is kept).
    records_in_flight: HashMap<String, usize>,
}

impl RepublishSet {
    pub fn new() -> Self {
        RepublishSet::default()
    }

    /// The broker acknowledged a retained message of ours on `topic`: it is now the value to
    /// put back should the broker lose it.
    pub fn remember(&mut self, topic: &str, payload: &[u8]) {
        if payload.is_empty() {
            // An empty retained message deleted the topic's value: nothing to put back.
            self.payloads.remove(topic);
            return;
        }
        match self.payloads.get_mut(topic) {
            Some(held) => {
                // Reuse the allocation: this runs once per acknowledged reading.
                held.clear();
                held.extend_from_slice(payload);
            }
            None => {
                self.payloads.insert(topic.to_owned(), payload.to_vec());
            }
        }
    }

    /// A newer retained record of `topic` was handed to the broker: republishing the held
    /// value is no longer needed (the record itself will be delivered).
    pub fn record_sent(&mut self, topic: &str) {
        if self.queued.remove(topic) {
            self.pending.retain(|t| t != topic);
        }
        // Runs once per retained record sent: allocate the key only for a topic not in flight.
        match self.records_in_flight.get_mut(topic) {
            Some(n) => *n += 1,
            None => {
                self.records_in_flight.insert(topic.to_owned(), 1);
            }
        }
    }

    /// The broker acknowledged a retained record handed over with [`record_sent`]: its
    /// payload is the newest retained value of the topic.
    pub fn record_acknowledged(&mut self, topic: &str, payload: &[u8]) {
        // The count stays at zero rather than the key going: the topic's next record would
        // allocate it again, once per reading.
        if let Some(n) = self.records_in_flight.get_mut(topic) {
            *n = n.saturating_sub(1);
        }
        self.remember(topic, payload);
    }

    /// A record of `topic` was given up (quarantined): if an older value is held, put it
    /// back on the pending list in case a republish was cancelled in its favour.
    pub fn record_given_up(&mut self, topic: &str) {
        if self.payloads.contains_key(topic) && !self.in_flight.contains(topic) {
            self.enqueue(topic.to_owned());
        }
    }

    /// The broker has none of our retained messages: every held topic is to be republished.
    /// Returns how many are pending now.
    pub fn broker_lost_all(&mut self) -> usize {
        let topics: Vec<String> = self
            .payloads
            .keys()
            .filter(|t| {
                !self.queued.contains(*t)
                    && !self.in_flight.contains(*t)
                    && self.records_in_flight.get(*t).is_none_or(|&n| n == 0)
            })
            .cloned()
            .collect();
        for topic in topics {
            self.enqueue(topic);
        }
        self.pending.len()
    }

    /// Retained state this gateway owns by definition rather than by a reading (a Home
    /// Assistant discovery config): held, and to be published ahead of any backlog.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.remember(topic, payload);
        if !self.in_flight.contains(topic) {
            self.enqueue(topic.to_owned());
        }
    }

    /// Someone lost the held topics that `wanted` picks (Home Assistant restarted and
    /// asks for its discovery configs again): they are to be republished. Returns how many
    /// were queued now.
    pub fn lost(&mut self, wanted: impl Fn(&str) -> bool) -> usize {
        let topics: Vec<String> = self
            .payloads
            .keys()
            .filter(|t| wanted(t) && !self.queued.contains(*t) && !self.in_flight.contains(*t))
            .cloned()
            .collect();
        let queued = topics.len();
        for topic in topics {
            self.enqueue(topic);
        }
        queued
    }

    fn enqueue(&mut self, topic: String) {
        if self.queued.insert(topic.clone()) {
            self.pending.push_back(topic);
        }
    }

    /// The next topic to republish and the payload held for it now; it counts as in flight
    /// until [`acknowledged`](Self::acknowledged) or [`connection_lost`](Self::connection_lost).
    pub fn next(&mut self) -> Option<(String, Vec<u8>)> {
        while let Some(topic) = self.pending.pop_front() {
            self.queued.remove(&topic);
            if let Some(payload) = self.payloads.get(&topic) {
                let payload = payload.clone();
                self.in_flight.insert(topic.clone());
                return Some((topic, payload));
            }
        }
        None
    }

    /// The broker acknowledged the republish of `topic`.
    pub fn acknowledged(&mut self, topic: &str) {
        self.in_flight.remove(topic);
    }

    /// The connection ended: republishes not acknowledged are pending again, first in line.
    pub fn connection_lost(&mut self) {
        // Unacknowledged records go back to the outbox, which sends them again after any
        // republish of their topics.
        self.records_in_flight.clear();
        let lost: Vec<String> = self.in_flight.drain().collect();
        for topic in lost {
            if self.queued.insert(topic.clone()) {
                self.pending.push_front(topic);
            }
        }
    }

    /// Topics waiting to be republished.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Retained topics held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.payloads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(set: &mut RepublishSet) -> Vec<(String, String)> {
        std::iter::from_fn(|| set.next())
            .map(|(t, p)| (t, String::from_utf8(p).unwrap()))
            .collect()
    }

    #[test]
    fn a_broker_that_lost_everything_gets_the_newest_acknowledged_payload_of_every_topic() {
        let mut set = RepublishSet::new();
        set.remember("gw/m1/status", b"online");
        set.remember("gw/m1/v", b"1");
        set.remember("gw/m1/v", b"2");
        assert_eq!(set.len(), 2);
        assert!(drain(&mut set).is_empty(), "nothing pending before a loss");

        assert_eq!(set.broker_lost_all(), 2);
        let mut sent = drain(&mut set);
        sent.sort();
        assert_eq!(
            sent,
            [
                ("gw/m1/status".into(), "online".into()),
                ("gw/m1/v".into(), "2".into())
            ]
        );
    }

    #[test]
    fn a_republish_lost_with_its_connection_goes_out_again_with_the_value_held_by_then() {
        let mut set = RepublishSet::new();
        set.remember("t", b"old");
        set.broker_lost_all();
        assert_eq!(set.next(), Some(("t".into(), b"old".to_vec())));
        // A newer record was acknowledged meanwhile (it was sent after the republish).
        set.remember("t", b"new");
        set.connection_lost();
        assert_eq!(set.next(), Some(("t".into(), b"new".to_vec())));
        set.acknowledged("t");
        set.connection_lost();
        assert_eq!(set.next(), None, "acknowledged: done");
    }

    #[test]
    fn a_newer_record_on_its_way_cancels_the_pending_republish_of_its_topic() {
        let mut set = RepublishSet::new();
        set.remember("a", b"1");
        set.remember("b", b"1");
        set.broker_lost_all();
        set.record_sent("a");
        assert_eq!(drain(&mut set), [("b".into(), "1".into())]);
        // That record was then given up: the held value must still come back.
        set.record_given_up("a");
        assert_eq!(drain(&mut set), [("a".into(), "1".into())]);
    }

    #[test]
    fn a_broker_found_empty_while_a_newer_record_is_on_the_wire_is_not_sent_the_older_value() {
        let mut set = RepublishSet::new();
        set.remember("a", b"9");
        set.remember("b", b"1");
        // The newest reading of `a` goes out before the broker check's answer comes back.
        set.record_sent("a");
        assert_eq!(set.broker_lost_all(), 1);
        assert_eq!(drain(&mut set), [("b".into(), "1".into())]);
        set.record_acknowledged("a", b"229");
        set.acknowledged("b");
        // Once acknowledged the topic is held at its newest and put back like any other.
        assert_eq!(set.broker_lost_all(), 2);
        let mut sent = drain(&mut set);
        sent.sort();
        assert_eq!(sent, [("a".into(), "229".into()), ("b".into(), "1".into())]);
    }

    #[test]
    fn a_deleted_topic_is_not_put_back_and_a_chosen_part_can_be() {
        let mut set = RepublishSet::new();
        set.remember("ha/sensor/gw/a/config", b"{}");
        set.remember("ha/sensor/gw/b/config", b"{}");
        set.remember("ha/sensor/gw/b/config", b"");
        set.remember("gw/m1/v", b"1");
        assert_eq!(set.lost(|t| t.starts_with("ha/")), 1);
        assert_eq!(
            drain(&mut set),
            [("ha/sensor/gw/a/config".into(), "{}".into())]
        );
        set.acknowledged("ha/sensor/gw/a/config");
        assert_eq!(
            set.broker_lost_all(),
            2,
            "the config and the reading, not the deleted one"
        );
    }

    #[test]
    fn losing_everything_twice_queues_each_topic_once() {
        let mut set = RepublishSet::new();
        set.remember("a", b"1");
        set.broker_lost_all();
        assert_eq!(set.broker_lost_all(), 1);
        let (topic, _) = set.next().unwrap();
        assert_eq!(set.broker_lost_all(), 0, "in flight: not queued twice");
        set.connection_lost();
        assert_eq!(set.pending(), 1);
        assert_eq!(topic, "a");
    }
}
