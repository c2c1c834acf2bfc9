//! The vocabulary between the outbox's decisions ([`super::state`]) and the thread that
//! carries them out (`io`): what a disk round should do, what a store that was
//! opened or written reports, and when `take` will have something.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::record::Record;
use super::recover::Recovery;

/// When `take` would hand something out, for `wait_queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Now,
    /// Only rate-held history is waiting: ask again after this long (or on a push).
    After(Duration),
    /// Nothing to hand out until something is pushed or read back.
    OnNotify,
}

/// What the next disk round should do first: the write and whether it must make room.
/// Later steps of the round ask again (`State::deletes_due`, `State::expiry_due`,
/// `State::reservation`, `State::replay_read`) because they depend on what the write
/// changed.
#[derive(Debug, Default)]
pub struct Plan {
    /// Records to append (not on disk yet), oldest first; empty when nothing is due.
    pub batch: Vec<Record>,
    /// Maybe-delivered records whose `sent` flag is not on disk yet.
    pub sent: HashSet<u64>,
    /// Topics whose newest seq changed since it was last written.
    pub newest: Vec<(Arc<str>, u64)>,
    /// A spill: queued copies leave memory once written (they come back through replay).
    pub spill: bool,
    /// Whether a write (spill or commit) is due at all.
    pub write: bool,
    /// The write would pass `max_size`: delete every acknowledged row first, or the bound
    /// would drop an unsent older record while delivered newer ones hold space.
    pub make_room: bool,
    /// Deletes are flushed this round whatever the batch size (spill, shutdown).
    pub force_deletes: bool,
}

/// A replay read the round should make.
#[derive(Debug)]
pub struct Read {
    pub after: u64,
    /// `replay = "latest"` at the start of an episode: prune superseded rows first, except
    /// these (in memory, or maybe delivered: only their ack retires them).
    pub prune_except: Option<HashSet<u64>>,
}

/// What an opened store tells the memory about itself (see `State::attached`).
#[derive(Debug)]
pub struct Opened {
    pub latest: Vec<(String, u64)>,
    /// The first record number that is safe given the store.
    pub start: u64,
    pub boot: u64,
    pub maybe_delivered: Vec<u64>,
    pub reserved: u64,
    pub depth: u64,
    pub dropped: u64,
    pub recovery: Option<Recovery>,
}

/// The store's figures after a write: rows, drops so far, and the bytes `max_size` bounds.
#[derive(Debug, Clone, Copy)]
pub struct StoreAfter {
    pub depth: u64,
    pub dropped: u64,
    pub stored_bytes: u64,
}
