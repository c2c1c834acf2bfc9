//! The outbox: records waiting for the broker's acknowledgement.
//!
//! Owns ordering, sequence numbers and the bound on what is held. It is the seam the
//! durable buffer replaces: the uplink only ever sees `take` / `ack` / `requeue_inflight`.
//! Built with [`Outbox::with_buffer`], every call is delegated to `buffer::Durable`, which
//! keeps the same contract and adds the disk (see `buffer` for what that adds).
//!
//! Invariants:
//! - `seq` is assigned at `push`, strictly increasing per gateway.
//! - A record leaves the outbox only through `ack` (its PUBACK arrived), by being dropped
//!   when the outbox is full, or by `discard` (the broker will never take it, see
//!   `uplink::quarantine`); both of the latter are counted in `dropped`.
//! - `take` hands records out oldest first; `requeue_inflight` puts every record that was
//!   handed out but not acknowledged back at the head, in its original order.
//! - Only queued records are dropped when full, oldest first: in-flight ones may already be
//!   on the wire.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::buffer::Durable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub ts_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    queued: VecDeque<Record>,
    inflight: VecDeque<Record>,
    next_seq: u64,
    dropped: u64,
    /// Set while records are being dropped, so the warning is logged once per episode.
    overflowing: bool,
    newest_seq_by_topic: HashMap<String, u64>,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    notify: Notify,
    /// When set, every call goes to the durable buffer and `state` stays unused.
    durable: Option<Durable>,
}

impl Outbox {
    /// `capacity` bounds queued plus in-flight records.
    pub fn new(capacity: usize, first_seq: u64) -> Self {
        Outbox {
            state: Mutex::new(State {
                next_seq: first_seq,
                ..State::default()
            }),
            capacity: capacity.max(1),
            notify: Notify::new(),
            durable: None,
        }
    }

    /// An outbox backed by the durable store-and-forward buffer (same contract).
    pub fn with_buffer(durable: Durable) -> Self {
        Outbox {
            durable: Some(durable),
            ..Outbox::new(1, 1)
        }
    }

    /// The durable buffer behind this outbox, for `spill`, `shutdown` and `status`.
    pub fn buffer(&self) -> Option<&Durable> {
        self.durable.as_ref()
    }

    /// Queues a record; `payload` is built with the record's sequence number. Never blocks:
    /// when full, the oldest queued record is dropped and counted.
    pub fn push(&self, topic: String, ts_ms: u64, payload: impl FnOnce(u64) -> Vec<u8>) -> u64 {
        if let Some(d) = &self.durable {
            return d.push(topic, ts_ms, payload);
        }
        let mut st = self.state.lock().unwrap();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.newest_seq_by_topic.insert(topic.clone(), seq);
        let record = Record {
            seq,
            payload: payload(seq),
            topic,
            ts_ms,
        };
        st.queued.push_back(record);
        let mut dropped_now = 0;
        while st.queued.len() + st.inflight.len() > self.capacity && st.queued.len() > 1 {
            st.queued.pop_front();
            dropped_now += 1;
        }
        if dropped_now > 0 {
            st.dropped += dropped_now;
            if !st.overflowing {
                st.overflowing = true;
                tracing::warn!(
                    capacity = self.capacity,
                    "outbox full: dropping the oldest readings until the link drains it \
                     (raise mqtt.queue_capacity to hold a longer outage)"
                );
            }
        } else if st.overflowing && st.queued.len() + st.inflight.len() < self.capacity / 2 {
            st.overflowing = false;
        }
        drop(st);
        self.notify.notify_one();
        seq
    }

    /// Hands out up to `max` queued records, oldest first, and marks them in flight.
    pub fn take(&self, max: usize) -> Vec<Record> {
        if let Some(d) = &self.durable {
            return d.take(max);
        }
        let mut st = self.state.lock().unwrap();
        let n = max.min(st.queued.len());
        let batch: Vec<Record> = st.queued.drain(..n).collect();
        st.inflight.extend(batch.iter().cloned());
        batch
    }

    /// Resolves once at least one record is queued.
    pub async fn wait_queued(&self) {
        if let Some(d) = &self.durable {
            return d.wait_queued().await;
        }
        loop {
            let notified = self.notify.notified();
            if !self.state.lock().unwrap().queued.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// The broker acknowledged `seq`: forget it. Unknown sequence numbers are ignored
    /// (a duplicate ack after a resend).
    pub fn ack(&self, seq: u64) -> bool {
        if let Some(d) = &self.durable {
            return d.ack(seq);
        }
        let mut st = self.state.lock().unwrap();
        if st.inflight.front().is_some_and(|r| r.seq == seq) {
            st.inflight.pop_front();
            return true;
        }
        match st.inflight.iter().position(|r| r.seq == seq) {
            Some(i) => {
                st.inflight.remove(i);
                true
            }
            None => false,
        }
    }

    /// Gives up on the in-flight record `seq` (the broker will never take it): it leaves like
    /// an acknowledged one but is counted as dropped. False if `seq` is not in flight.
    pub fn discard(&self, seq: u64) -> bool {
        if let Some(d) = &self.durable {
            return d.discard(seq);
        }
        let mut st = self.state.lock().unwrap();
        let Some(i) = st.inflight.iter().position(|r| r.seq == seq) else {
            return false;
        };
        st.inflight.remove(i);
        st.dropped += 1;
        true
    }

    /// The link died: every unacknowledged record goes back to the head of the queue.
    pub fn requeue_inflight(&self) -> usize {
        if let Some(d) = &self.durable {
            return d.requeue_inflight();
        }
        let mut st = self.state.lock().unwrap();
        let inflight = std::mem::take(&mut st.inflight);
        let n = inflight.len();
        for record in inflight.into_iter().rev() {
            st.queued.push_front(record);
        }
        drop(st);
        if n > 0 {
            self.notify.notify_one();
        }
        n
    }

    /// True when no newer record for the same topic has been pushed: only such a record may
    /// be published retained, so a replayed older reading never overwrites a newer one.
    pub fn is_newest(&self, record: &Record) -> bool {
        if let Some(d) = &self.durable {
            return d.is_newest(record);
        }
        let st = self.state.lock().unwrap();
        st.newest_seq_by_topic
            .get(&record.topic)
            .is_none_or(|&s| s <= record.seq)
    }

    /// The sequence number the next `push` will get.
    pub fn next_seq(&self) -> u64 {
        if let Some(d) = &self.durable {
            return d.next_seq();
        }
        self.state.lock().unwrap().next_seq
    }

    pub fn depth(&self) -> usize {
        if let Some(d) = &self.durable {
            return d.depth();
        }
        let st = self.state.lock().unwrap();
        st.queued.len() + st.inflight.len()
    }

    pub fn inflight(&self) -> usize {
        if let Some(d) = &self.durable {
            return d.inflight();
        }
        self.state.lock().unwrap().inflight.len()
    }

    pub fn dropped(&self) -> u64 {
        if let Some(d) = &self.durable {
            return d.dropped();
        }
        self.state.lock().unwrap().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(o: &Outbox, topic: &str) -> u64 {
        o.push(topic.into(), 0, |s| s.to_string().into_bytes())
    }

    #[test]
    fn unacked_records_come_back_first_and_in_order() {
        let o = Outbox::new(100, 1);
        for _ in 0..5 {
            push(&o, "a");
        }
        let first = o.take(3);
        assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(o.ack(1));
        assert_eq!(o.requeue_inflight(), 2);
        let again = o.take(10);
        assert_eq!(
            again.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
    }

    #[test]
    fn full_outbox_drops_oldest_queued_but_never_inflight() {
        let o = Outbox::new(3, 1);
        push(&o, "a");
        let inflight = o.take(1);
        for _ in 0..4 {
            push(&o, "a");
        }
        assert_eq!(o.depth(), 3);
        assert_eq!(o.dropped(), 2);
        assert_eq!(inflight[0].seq, 1);
        let rest = o.take(10);
        assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn a_discarded_record_is_gone_and_counted_as_dropped() {
        let o = Outbox::new(10, 1);
        push(&o, "a");
        push(&o, "b");
        let taken = o.take(2);
        assert!(o.discard(taken[0].seq));
        assert!(!o.discard(taken[0].seq), "only once");
        assert_eq!(o.dropped(), 1);
        o.requeue_inflight();
        let again = o.take(10);
        assert_eq!(again.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn only_the_newest_record_of_a_topic_is_newest() {
        let o = Outbox::new(10, 1);
        push(&o, "a");
        push(&o, "b");
        push(&o, "a");
        let all = o.take(10);
        let newest: Vec<bool> = all.iter().map(|r| o.is_newest(r)).collect();
        assert_eq!(newest, [false, true, true]);
    }
}
