//! Finding the one record a broker will never take, so it cannot block the queue forever.
//!
//! A broker that cannot take a message (mosquitto with a `max_packet_size` below it) closes
//! the connection the moment it reads its header. The record goes back to the head of the
//! queue, is resent after the reconnect, closes that connection too, and nothing behind it
//! is ever delivered. This module decides, with no I/O and time passed in, which record to
//! give up on. It owns the suspects and their strikes, and the words for a record given up
//! ([`GiveUp`]): `mqtt` sends the records, asks [`Quarantine::is_suspect`], and drops the
//! culprit from the outbox.
//!
//! Which record is the culprit when 64 are in the send window? Not simply the oldest
//! unacknowledged one: the broker acknowledged the records before the culprit, but a
//! connection closed with unread data is reset, and a reset can throw away PUBACKs not yet
//! read (seen with mosquitto 2.0.11: two of three PUBACKs arrived). So:
//! 1. When the broker closes the connection (not our keep-alive verdict, not a timeout)
//!    within [`SUSPECT_WINDOW`] of records being written, each of them becomes a suspect
//!    with one strike.
//! 2. A suspect is sent again only alone: once everything sent before it is settled (the
//!    birth included) and with nothing after it until its PUBACK. An acknowledged suspect is
//!    cleared.
//! 3. A disconnect within [`SUSPECT_WINDOW`] of a lone suspect being written is one more
//!    strike for it; at [`STRIKES`] it is quarantined: three consecutive disconnects right
//!    after it was sent, the last two with nothing else on the wire.
//! 4. Any other disconnect breaks the chain: strikes restart, suspects stay suspects.
//!
//! An ordinary flaky link gets at most one round of one-at-a-time sends after a reset; an
//! innocent record would have to be the lone record in flight at two more resets in a row,
//! each within seconds of sending it, to be given up.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// A disconnect this soon after a record was written counts against it: a broker reacts to
/// an oversize packet as soon as its header arrives, one round trip on the slowest links.
pub const SUSPECT_WINDOW: Duration = Duration::from_secs(5);
/// Consecutive disconnects right after a record was sent that get it quarantined.
pub const STRIKES: u32 = 3;

/// How a connection ended, as far as blaming a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The broker closed or reset it (EOF, RST, a failed write).
    ClosedByBroker,
    /// Our keep-alive verdict, a timeout, a shutdown: says nothing about what was sent.
    Other,
}

/// A record handed out and not acknowledged when the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unacked {
    pub id: u64,
    /// When rumqttc wrote it to the socket; `None` if it never was.
    pub written_at: Option<Instant>,
}

/// A record given up on for good: dropped from the outbox, counted, logged at error and
/// shown on the health topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp<'a> {
    pub id: u64,
    pub topic: &'a str,
    pub bytes: usize,
    /// Why it can never be delivered, in words.
    pub why: String,
}

impl GiveUp<'_> {
    /// The reason for a record that struck out (see the module doc).
    pub fn struck_out() -> String {
        format!(
            "the broker closed the connection right after it was sent, {STRIKES} times in a \
             row (larger than the broker's max_packet_size?)"
        )
    }

    /// For the log: what was dropped, why, and that the queue goes on.
    pub fn log_text(&self) -> String {
        format!(
            "gave up on a message on {} ({} bytes): {}. It is dropped and counted (health: \
             dropped, quarantined); the queue moves on",
            self.topic, self.bytes, self.why
        )
    }

    /// For the health topic's `last_quarantined`.
    pub fn summary(&self) -> String {
        format!("{} ({} bytes): {}", self.topic, self.bytes, self.why)
    }
}

/// Suspects and their strikes across connections; see the module doc.
#[derive(Debug, Default)]
pub struct Quarantine {
    strikes: HashMap<u64, u32>,
    /// The suspect on the wire alone in the current connection, if any.
    probe: Option<u64>,
}

impl Quarantine {
    pub fn new() -> Self {
        Quarantine::default()
    }

    pub fn is_suspect(&self, id: u64) -> bool {
        self.strikes.contains_key(&id)
    }

    pub fn has_suspects(&self) -> bool {
        !self.strikes.is_empty()
    }

    /// A suspect was handed out alone.
    pub fn probe_sent(&mut self, id: u64) {
        self.probe = Some(id);
    }

    /// The suspect on the wire, if one is.
    pub fn probe(&self) -> Option<u64> {
        self.probe
    }

    /// The broker acknowledged `id`: whatever it was suspected of, it is cleared.
    pub fn acknowledged(&mut self, id: u64) {
        self.strikes.remove(&id);
        if self.probe == Some(id) {
            self.probe = None;
        }
    }

    /// Nothing is queued any more: a suspect left some other way (a buffer bound dropped it).
    pub fn queue_empty(&mut self) {
        self.strikes.clear();
        self.probe = None;
    }

    /// The connection ended at `now` with `unacked` records handed out. Returns the record to
    /// quarantine, if one has earned it.
    pub fn connection_ended(
        &mut self,
        ending: Ending,
        unacked: &[Unacked],
        now: Instant,
    ) -> Option<u64> {
        let probe = self.probe.take();
        let recent: Vec<u64> = unacked
            .iter()
            .filter(|u| {
                u.written_at
                    .is_some_and(|at| now.saturating_duration_since(at) <= SUSPECT_WINDOW)
            })
            .map(|u| u.id)
            .collect();
        if ending != Ending::ClosedByBroker || recent.is_empty() {
            self.strikes.values_mut().for_each(|s| *s = 0);
            return None;
        }
        match probe {
            Some(id) if recent == [id] => {
                for (suspect, strikes) in self.strikes.iter_mut() {
                    if *suspect == id {
                        *strikes += 1;
                    } else {
                        *strikes = 0;
                    }
                }
                let strikes = self.strikes.entry(id).or_insert(1);
                if *strikes >= STRIKES {
                    self.strikes.remove(&id);
                    return Some(id);
                }
                None
            }
            _ => {
                for (suspect, strikes) in self.strikes.iter_mut() {
                    if !recent.contains(suspect) {
                        *strikes = 0;
                    }
                }
                for id in recent {
                    *self.strikes.entry(id).or_insert(0) += 1;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unacked(ids: &[u64], at: Instant) -> Vec<Unacked> {
        ids.iter()
            .map(|&id| Unacked {
                id,
                written_at: Some(at),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_oversize_record_in_a_full_window_is_found_and_only_it_is_quarantined() {
        let now = Instant::now();
        let mut q = Quarantine::new();
        // Records 1..=64 in flight; 10 is too big; the PUBACKs of 1..=9 were lost to the reset.
        let window: Vec<u64> = (1..=64).collect();
        assert_eq!(
            q.connection_ended(Ending::ClosedByBroker, &unacked(&window, now), now),
            None
        );
        assert!(window.iter().all(|&id| q.is_suspect(id)));

        // Next connection: suspects go one at a time; 1..=9 are acknowledged, 10 closes it.
        for id in 1..=9 {
            q.probe_sent(id);
            q.acknowledged(id);
        }
        q.probe_sent(10);
        assert_eq!(
            q.connection_ended(Ending::ClosedByBroker, &unacked(&[10], now), now),
            None,
            "two strikes"
        );
        q.probe_sent(10);
        assert_eq!(
            q.connection_ended(Ending::ClosedByBroker, &unacked(&[10], now), now),
            Some(10)
        );
        assert!(!q.is_suspect(10));
        // The rest are still suspects until acknowledged one by one.
        assert!(q.is_suspect(11) && q.has_suspects());
        for id in 11..=64 {
            q.acknowledged(id);
        }
        assert!(!q.has_suspects());
    }

    #[tokio::test(start_paused = true)]
    async fn resets_on_a_flaky_link_never_quarantine_what_the_broker_then_acknowledges() {
        let now = Instant::now();
        let mut q = Quarantine::new();
        for round in 0..10u64 {
            let ids: Vec<u64> = (round * 100..round * 100 + 64).collect();
            assert_eq!(
                q.connection_ended(Ending::ClosedByBroker, &unacked(&ids, now), now),
                None
            );
            for id in ids {
                q.probe_sent(id);
                q.acknowledged(id);
            }
            assert!(!q.has_suspects());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_verdict_or_a_late_disconnect_breaks_the_chain() {
        let start = Instant::now();
        let mut q = Quarantine::new();
        q.connection_ended(Ending::ClosedByBroker, &unacked(&[7], start), start);
        q.probe_sent(7);
        q.connection_ended(Ending::ClosedByBroker, &unacked(&[7], start), start);
        // Two strikes; then the link dies by our keep-alive verdict with 7 on the wire.
        q.probe_sent(7);
        assert_eq!(
            q.connection_ended(Ending::Other, &unacked(&[7], start), start),
            None
        );
        // And a close long after 7 was written says nothing about 7 either.
        q.probe_sent(7);
        let later = start + SUSPECT_WINDOW + Duration::from_millis(1);
        assert_eq!(
            q.connection_ended(Ending::ClosedByBroker, &unacked(&[7], start), later),
            None
        );
        assert!(q.is_suspect(7), "still sent alone");
        // Three fresh strikes are needed now: the one that made it a suspect is spent.
        for expected in [None, None, Some(7)] {
            q.probe_sent(7);
            assert_eq!(
                q.connection_ended(Ending::ClosedByBroker, &unacked(&[7], later), later),
                expected
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_never_written_is_not_suspected() {
        let now = Instant::now();
        let mut q = Quarantine::new();
        let handed = [Unacked {
            id: 3,
            written_at: None,
        }];
        q.connection_ended(Ending::ClosedByBroker, &handed, now);
        assert!(!q.is_suspect(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_queue_clears_suspects_that_left_it_some_other_way() {
        let now = Instant::now();
        let mut q = Quarantine::new();
        q.connection_ended(Ending::ClosedByBroker, &unacked(&[1, 2], now), now);
        q.queue_empty();
        assert!(!q.has_suspects());
    }
}
