//! "Delivered means PUBACKed": the life of every publish handed to the MQTT client on one
//! connection, from the request to the moment it is settled.
//!
//! ```text
//! requested ──Outgoing::Publish(pkid)──> written ──PUBACK(pkid)──> acknowledged ─> settled
//!     (QoS 0 is settled once written: there is nothing more to wait for)
//! ```
//!
//! Owns the pairing of the client's events with what we asked for, and the bound on the
//! send window. No I/O, no rumqttc, no clock reads: `mqtt` feeds it the client's events with
//! `now` and acts on what comes out (a settled record leaves the outbox).
//! What is tracked is the caller's business (`T`): this module never looks inside it.
//!
//! Facts it rests on (see docs/design.md#rumqttc-025): `publish()` returns no packet id; the
//! ids appear in request order as `Outgoing::Publish(pkid)` events, so a FIFO of requests
//! pairs each id with its publish. QoS 0 publishes carry id 0. With a fresh event loop per
//! connection and a clean session, rumqttc never resends behind our back, so every write
//! event is a first write. A publish whose id is still in flight (a broker acking out of
//! order) is held by rumqttc, which stops taking requests, and written only after that id's
//! PUBACK, whose event comes first: request order and the settle-then-reuse order both hold.
//! rumqttc itself fails the connection on an unsolicited PUBACK; the rules below do not
//! rely on that.
//!
//! Rules:
//! - A publish is settled exactly once: a duplicate PUBACK, or one for a packet id we are not
//!   waiting on (a broker's mistake), settles nothing and frees no room in the window.
//! - The window bounds the records and republishes in flight ([`Counted::InWindow`]) and
//!   stays below rumqttc's own in-flight limit, so rumqttc never stops taking our requests
//!   for a full in-flight queue and its request channel never fills. Our own birth, health
//!   and `offline` go beside it ([`Counted::Beside`]): they must never wait behind a full
//!   window.
//! - A write that matches no request, or a packet id written while the same id still waits
//!   for its PUBACK, means the pairing can no longer be trusted: it is reported
//!   ([`Mismatch`]) and the connection must end; the outbox then puts back everything not
//!   settled, so nothing is lost and nothing is counted delivered on a guess.
//! - When the connection ends, whatever is not settled is handed back
//!   ([`Delivery::unsettled`]), with when it was written, for the quarantine's judgement.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

/// The largest MQTT packet we send or accept. A record that cannot fit is given up at once
/// (rumqttc would fail the whole connection on it).
pub const MAX_PACKET: usize = 256 * 1024;

/// When a publish is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settles {
    /// QoS 0: once the client wrote it.
    OnWrite,
    /// QoS 1: once the broker's PUBACK arrived.
    OnPubAck,
}

/// Whether a publish takes a place in the send window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Records and republished retained messages: bounded by the window.
    InWindow,
    /// Our own birth, health and `offline`: beside the window, never held back by it.
    Beside,
}

/// The client's events no longer match what we asked for; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The client wrote a publish we did not request.
    Unrequested { pkid: u16 },
    /// The client wrote packet id `pkid` while an earlier publish with that id still waits
    /// for its PUBACK.
    PacketIdInUse { pkid: u16 },
}

/// What a write event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written<'a, T> {
    /// A QoS 0 publish: done.
    Settled(T),
    /// A QoS 1 publish, now waiting for its PUBACK.
    AwaitingAck(&'a T),
}

/// What a PUBACK did.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked<T> {
    /// The publish written with this id is done.
    Settled(T),
    /// Nothing waits for this id: a duplicate, or an id we never wrote. Nothing changes.
    Unknown,
}

#[derive(Debug)]
struct InFlight<T> {
    item: T,
    settles: Settles,
    counted: Counted,
    written_at: Option<Instant>,
}

/// One connection's publishes between their request and their settlement.
#[derive(Debug)]
pub struct Delivery<T> {
    window: usize,
    in_window: usize,
    /// Handed to the client, write event not seen yet; in request order.
    requested: VecDeque<InFlight<T>>,
    /// Written QoS 1 publishes waiting for their PUBACK, by packet id.
    written: HashMap<u16, InFlight<T>>,
}

impl<T> Delivery<T> {
    /// At most `window` publishes [`Counted::InWindow`] unsettled at a time.
    pub fn new(window: usize) -> Self {
        Delivery {
            window,
            in_window: 0,
            requested: VecDeque::new(),
            written: HashMap::new(),
        }
    }

    /// How many more publishes the window takes now.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.in_window)
    }

    /// Nothing is requested or waiting for a PUBACK (a suspect record may go now, alone).
    pub fn is_idle(&self) -> bool {
        self.requested.is_empty() && self.written.is_empty()
    }

    /// `item` was handed to the client. One counted in the window needs [`room`](Self::room):
    /// the caller checks before it hands anything over, since a publish handed over cannot
    /// be taken back.
    pub fn requested(&mut self, item: T, settles: Settles, counted: Counted) {
        if counted == Counted::InWindow {
            debug_assert!(self.room() > 0, "a publish requested beyond the window");
            self.in_window += 1;
        }
        self.requested.push_back(InFlight {
            item,
            settles,
            counted,
            written_at: None,
        });
    }

    /// The client wrote the oldest requested publish, with packet id `pkid`, at `now`.
    pub fn written(&mut self, pkid: u16, now: Instant) -> Result<Written<'_, T>, Mismatch> {
        let Some(mut sent) = self.requested.pop_front() else {
            return Err(Mismatch::Unrequested { pkid });
        };
        sent.written_at = Some(now);
        match sent.settles {
            Settles::OnWrite => Ok(Written::Settled(self.settle(sent))),
            Settles::OnPubAck => match self.written.entry(pkid) {
                Entry::Occupied(_) => {
                    // Put it back: the caller ends the connection and asks what is unsettled.
                    self.requested.push_front(sent);
                    Err(Mismatch::PacketIdInUse { pkid })
                }
                Entry::Vacant(slot) => Ok(Written::AwaitingAck(&slot.insert(sent).item)),
            },
        }
    }

    /// The broker acknowledged packet id `pkid`.
    pub fn acknowledged(&mut self, pkid: u16) -> Acked<T> {
        match self.written.remove(&pkid) {
            Some(sent) => Acked::Settled(self.settle(sent)),
            None => Acked::Unknown,
        }
    }

    fn settle(&mut self, sent: InFlight<T>) -> T {
        if sent.counted == Counted::InWindow {
            self.in_window -= 1;
        }
        sent.item
    }

    /// Everything not settled, with when it was written (`None`: never written): requested
    /// ones in request order, then the written ones.
    pub fn unsettled(&self) -> impl Iterator<Item = (&T, Option<Instant>)> {
        self.requested
            .iter()
            .chain(self.written.values())
            .map(|sent| (&sent.item, sent.written_at))
    }
}

/// Why a publish of `payload` bytes on `topic` can never be sent, if it cannot.
pub fn too_large(topic: &str, payload: usize) -> Option<String> {
    let bytes = publish_packet_size(topic, payload);
    (bytes > MAX_PACKET).then(|| {
        format!("as an MQTT packet it would be {bytes} bytes, more than the {MAX_PACKET} fieldlink sends")
    })
}

/// Bytes of a QoS 1 PUBLISH packet: fixed header, remaining length, topic, packet id, payload.
fn publish_packet_size(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: usize = 3;

    fn delivery() -> Delivery<&'static str> {
        Delivery::new(WINDOW)
    }

    #[tokio::test(start_paused = true)]
    async fn a_qos1_publish_is_settled_by_its_puback_not_by_being_written() {
        let now = Instant::now();
        let mut d = delivery();
        d.requested("r1", Settles::OnPubAck, Counted::InWindow);
        assert_eq!(d.written(7, now), Ok(Written::AwaitingAck(&"r1")));
        assert_eq!(d.room(), WINDOW - 1, "written is not delivered");
        assert!(!d.is_idle());
        assert_eq!(d.acknowledged(7), Acked::Settled("r1"));
        assert_eq!(d.room(), WINDOW);
        assert!(d.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_qos0_publish_is_settled_once_written() {
        let mut d = delivery();
        d.requested("health", Settles::OnWrite, Counted::Beside);
        d.requested("r1", Settles::OnWrite, Counted::InWindow);
        assert_eq!(d.written(0, Instant::now()), Ok(Written::Settled("health")));
        assert_eq!(d.written(0, Instant::now()), Ok(Written::Settled("r1")));
        assert_eq!(d.room(), WINDOW);
        assert!(d.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_puback_settles_nothing_and_frees_no_room() {
        let now = Instant::now();
        let mut d = delivery();
        d.requested("r1", Settles::OnPubAck, Counted::InWindow);
        d.requested("r2", Settles::OnPubAck, Counted::InWindow);
        d.written(1, now).unwrap();
        d.written(2, now).unwrap();
        assert_eq!(d.acknowledged(1), Acked::Settled("r1"));
        assert_eq!(d.acknowledged(1), Acked::Unknown);
        assert_eq!(d.room(), WINDOW - 1, "r2 still holds its place");
        assert_eq!(d.unsettled().map(|(r, _)| *r).collect::<Vec<_>>(), ["r2"]);
        assert_eq!(d.acknowledged(2), Acked::Settled("r2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_puback_for_an_unknown_packet_id_settles_nothing() {
        let mut d = delivery();
        assert_eq!(d.acknowledged(9), Acked::Unknown, "nothing written yet");
        d.requested("r1", Settles::OnPubAck, Counted::InWindow);
        assert_eq!(
            d.acknowledged(1),
            Acked::Unknown,
            "requested, not written: the id is not known yet"
        );
        d.written(1, Instant::now()).unwrap();
        assert_eq!(d.acknowledged(2), Acked::Unknown);
        assert_eq!(d.room(), WINDOW - 1);
        assert_eq!(d.acknowledged(1), Acked::Settled("r1"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_bounds_records_in_flight_and_our_own_messages_go_beside_it() {
        let now = Instant::now();
        let mut d = delivery();
        for r in ["r1", "r2", "r3"] {
            assert!(d.room() > 0);
            d.requested(r, Settles::OnPubAck, Counted::InWindow);
        }
        assert_eq!(d.room(), 0, "full: the caller hands nothing more over");
        d.requested("birth", Settles::OnPubAck, Counted::Beside);
        for pkid in 1..=4 {
            d.written(pkid, now).unwrap();
        }
        assert_eq!(d.acknowledged(4), Acked::Settled("birth"));
        assert_eq!(d.room(), 0, "the birth took no place in the window");
        assert_eq!(d.acknowledged(2), Acked::Settled("r2"));
        assert_eq!(d.room(), 1, "one settled record, one place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_requested_or_a_packet_id_still_in_flight_is_a_mismatch() {
        let now = Instant::now();
        let mut d = delivery();
        assert_eq!(d.written(1, now), Err(Mismatch::Unrequested { pkid: 1 }));
        d.requested("r1", Settles::OnPubAck, Counted::InWindow);
        d.requested("r2", Settles::OnPubAck, Counted::InWindow);
        d.written(1, now).unwrap();
        assert_eq!(d.written(1, now), Err(Mismatch::PacketIdInUse { pkid: 1 }));
        let mut left: Vec<_> = d.unsettled().map(|(r, _)| *r).collect();
        left.sort();
        assert_eq!(left, ["r1", "r2"], "both are still to be requeued");
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_unsettled_at_the_end_says_when_it_was_written() {
        let start = Instant::now();
        let mut d = delivery();
        d.requested("r1", Settles::OnPubAck, Counted::InWindow);
        d.requested("r2", Settles::OnPubAck, Counted::InWindow);
        d.written(5, start).unwrap();
        let unsettled: Vec<_> = d.unsettled().map(|(r, at)| (*r, at)).collect();
        assert_eq!(unsettled, [("r2", None), ("r1", Some(start))]);
    }

    #[test]
    fn a_publish_is_too_large_when_its_whole_packet_exceeds_the_limit() {
        // 1 byte of fixed header, 3 of remaining length, 2 + 1 of topic, 2 of packet id.
        let fits = MAX_PACKET - 9;
        assert_eq!(publish_packet_size("t", fits), MAX_PACKET);
        assert_eq!(too_large("t", fits), None);
        let why = too_large("t", fits + 1).expect("one byte over");
        assert!(why.contains(&format!("{} bytes", MAX_PACKET + 1)), "{why}");
        assert_eq!(publish_packet_size("t", 0), 7, "a two-byte fixed header");
    }
}
