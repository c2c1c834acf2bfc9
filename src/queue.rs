//! The outbox: records waiting for the broker's acknowledgement.
//!
//! Owns ordering, sequence numbers and the bound on what is held. It is the seam the
//! durable buffer replaces: the uplink only ever sees `take` / `ack` / `requeue_inflight`.
//! Built with [`Outbox::with_buffer`], every call is delegated to `buffer::Durable`, which
//! keeps the same contract and adds the disk (see `buffer` for what that adds).
//!
//! Invariants:
//! - `seq` (the record number) is assigned at `push`, strictly increasing per gateway; it
//!   orders records and keys the store, and is never published.
//! - Readings also get a published [`ReadingNumber`]: the agent's boot epoch and a count
//!   that starts at 1 at every start and takes no gaps for status or meta records, so within
//!   one boot every gap a consumer sees is a real loss. Assigned under the same lock as
//!   `seq`, so the two orders agree.
//! - A record leaves the outbox only through `ack` (its PUBACK arrived), by being dropped
//!   when the outbox is full, or by `discard` (the broker will never take it, see
//!   `uplink::quarantine`); both of the latter are counted in `dropped`.
//! - `take` hands records out oldest first; `requeue_inflight` puts every record that was
//!   handed out but not acknowledged back at the head, in its original order.
//! - Only queued records are dropped when full, oldest first, and never one that was on the
//!   wire when the link died: the broker may have it (PUBACK lost), so counting it dropped
//!   could be a lie. It goes again first after the reconnect.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::buffer::clock::{Clock, Queued, SystemClock};
use crate::buffer::Durable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub ts_ms: u64,
    /// When it was queued on the boot-time clock: what the buffer's age bound measures.
    pub queued_at: Queued,
}

/// What a reading's payload publishes as its identity: `(boot, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadingNumber {
    /// The agent's start count (persisted in the buffer; see `buffer::durable`).
    pub boot: u64,
    /// 1, 2, 3… per boot, readings only.
    pub seq: u64,
}

#[derive(Debug, Default)]
struct State {
    queued: VecDeque<Record>,
    inflight: VecDeque<Record>,
    next_seq: u64,
    next_reading: u64,
    /// Requeued at a link loss and not acknowledged since: never dropped.
    maybe_delivered: HashSet<u64>,
    dropped: u64,
    /// Set while records are being dropped, so the warning is logged once per episode.
    overflowing: bool,
    newest_seq_by_topic: HashMap<String, u64>,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    boot: u64,
    clock: SystemClock,
    notify: Notify,
    /// When set, every call goes to the durable buffer and `state` stays unused.
    durable: Option<Durable>,
}

impl Outbox {
    /// `capacity` bounds queued plus in-flight records; `boot` is the epoch readings carry
    /// (a memory-only outbox has no store to count starts in: the caller says).
    pub fn new(capacity: usize, boot: u64) -> Self {
        Outbox {
            state: Mutex::new(State {
                next_seq: 1,
                next_reading: 1,
                ..State::default()
            }),
            capacity: capacity.max(1),
            boot,
            clock: SystemClock::new(),
            notify: Notify::new(),
            durable: None,
        }
    }

    /// An outbox backed by the durable store-and-forward buffer (same contract).
    pub fn with_buffer(durable: Durable) -> Self {
        Outbox {
            durable: Some(durable),
            ..Outbox::new(1, 0)
        }
    }

    /// The durable buffer behind this outbox, for `spill`, `shutdown` and `status`.
    pub fn buffer(&self) -> Option<&Durable> {
        self.durable.as_ref()
    }

    /// Queues a record that carries no reading number (a status, a meta). Never blocks:
    /// when full, the oldest queued record is dropped and counted.
    pub fn push(&self, topic: String, ts_ms: u64, payload: Vec<u8>) -> u64 {
        if let Some(d) = &self.durable {
            return d.push(topic, ts_ms, payload);
        }
        self.push_numbered(topic, ts_ms, false, |_| payload)
    }

    /// Queues a reading; `payload` is built with its [`ReadingNumber`]. Returns the record's
    /// `seq`. Never blocks.
    pub fn push_reading(
        &self,
        topic: String,
        ts_ms: u64,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> u64 {
        if let Some(d) = &self.durable {
            return d.push_reading(topic, ts_ms, payload);
        }
        self.push_numbered(topic, ts_ms, true, payload)
    }

    fn push_numbered(
        &self,
        topic: String,
        ts_ms: u64,
        reading: bool,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> u64 {
        let queued_at = Queued {
            os_boot: crate::buffer::clock::OsBoot::This,
            boot_ms: self.clock.boot_ms(),
        };
        let mut st = self.state.lock().unwrap();
        let seq = st.next_seq;
        st.next_seq += 1;
        let number = ReadingNumber {
            boot: self.boot,
            seq: st.next_reading,
        };
        if reading {
            st.next_reading += 1;
        }
        st.newest_seq_by_topic.insert(topic.clone(), seq);
        let record = Record {
            seq,
            payload: payload(number),
            topic,
            ts_ms,
            queued_at,
        };
        st.queued.push_back(record);
        let mut dropped_now = 0;
        while st.queued.len() + st.inflight.len() > self.capacity {
            // The newest stays; so does anything that may have reached the broker.
            let last = st.queued.len().saturating_sub(1);
            let st = &mut *st;
            let Some(i) = st
                .queued
                .iter()
                .take(last)
                .position(|r| !st.maybe_delivered.contains(&r.seq))
            else {
                break;
            };
            st.queued.remove(i);
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
        st.maybe_delivered.remove(&seq);
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
        st.maybe_delivered.extend(inflight.iter().map(|r| r.seq));
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

    /// The number of the last reading pushed in this boot (`seq` 0: none yet).
    pub fn last_reading(&self) -> ReadingNumber {
        if let Some(d) = &self.durable {
            return d.last_reading();
        }
        let st = self.state.lock().unwrap();
        ReadingNumber {
            boot: self.boot,
            seq: st.next_reading - 1,
        }
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
        o.push_reading(topic.into(), 0, |n| n.seq.to_string().into_bytes())
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
    fn a_full_outbox_never_drops_a_record_that_was_on_the_wire_when_the_link_died() {
        let o = Outbox::new(4, 1);
        push(&o, "a");
        push(&o, "a");
        assert_eq!(o.take(2).len(), 2);
        o.requeue_inflight(); // 1 and 2 may have reached the broker
        for _ in 0..4 {
            push(&o, "a");
        }
        let left: Vec<u64> = o.take(10).iter().map(|r| r.seq).collect();
        assert_eq!(left, [1, 2, 5, 6], "3 and 4 dropped instead");
        assert_eq!(o.dropped(), 2);
    }

    #[test]
    fn readings_are_numbered_densely_and_status_records_take_no_number() {
        let o = Outbox::new(100, 7);
        push(&o, "a");
        o.push("a/status".into(), 0, b"online".to_vec());
        push(&o, "a");
        let payloads: Vec<Vec<u8>> = o.take(10).into_iter().map(|r| r.payload).collect();
        assert_eq!(payloads, [b"1".to_vec(), b"online".to_vec(), b"2".to_vec()]);
        assert_eq!(o.last_reading(), ReadingNumber { boot: 7, seq: 2 });
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
