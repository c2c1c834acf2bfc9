//! The durable outbox: the `Outbox` contract (push / take / ack / requeue_inflight /
//! is_newest / depth / dropped) with a SQLite store behind the memory queue.
//!
//! Owns the memory queue, the replay of stored records, and the one thread that does all
//! disk I/O. Never touches the network: the uplink drives it through the same calls it
//! makes on the in-memory `Outbox`, and none of those calls blocks on the disk.
//!
//! # Where a record is
//! - `queued`: pushed (or put back by `requeue_inflight`), waiting for `take`.
//! - `history`: read back from disk for replay, waiting for `take`.
//! - `inflight`: handed out, waiting for `ack`.
//! - on disk only: spilled or committed, not in memory. `resident` holds the seqs that are
//!   both on disk and in memory, so a replay read never hands out a record twice.
//!
//! # When it writes
//! - `outage` mode: on [`Durable::spill`], on `requeue_inflight` (the link died), when the
//!   memory backlog passes `spill_threshold`, and on [`Durable::shutdown`]. A spill writes
//!   every queued and in-flight record not yet on disk, then drops the queued ones from
//!   memory (they come back through replay). With a healthy link nothing is written per
//!   reading; the only writes are one sequence-number reservation per 65 536 readings.
//! - `always` mode: every `commit_interval`, every record not yet on disk is committed, and
//!   `take` hands out only committed records (so a reading waits up to one interval).
//! - Acknowledged records that are on disk are deleted in batches (256, or every 10 s, or
//!   with a spill).
//!
//! # Replay
//! After the link is back (`take` or `wait_queued` is called again), stored records are
//! read oldest first
//! and `take` alternates batches: one from history, one from live readings, so neither
//! starves. History is held to `replay_rate` readings/s (token bucket); live readings are
//! never held back. `replay = "latest"` prunes every stored record that a newer one of its
//! topic supersedes before a replay starts.
//!
//! # Retained values
//! The rule is the `Outbox` one: a record may be published retained only if
//! [`Durable::is_newest`], i.e. no newer record of its topic is known: pushed in this run,
//! stored on disk, or noted in the store's `newest` table (written with every spill and
//! commit, and on shutdown). So replayed history goes out without retain unless it is the
//! newest reading of its point, and the retained value of every topic ends at its newest
//! reading whatever the interleaving. One gap, after a crash only: in `outage` mode the
//! `newest` table is as of the last spill, so a stored record superseded by a reading
//! published after that spill looks newest and is replayed retained; the next live reading
//! of that point (one poll interval) puts the retained value right again.
//!
//! # Drops are exact
//! A bound (`max_size`, `max_age`) never drops from a snapshot: inside its transaction the
//! store asks `State::verdicts` about each candidate under the state lock, which frees
//! acknowledged rows (no drop), keeps what is in flight or maybe delivered (on the wire
//! when the link died: `maybe_delivered`, persisted as the store's `sent` flag), and takes
//! everything else out of memory at that moment, so nothing can hand it out afterwards;
//! the store counts it in the same transaction. A failed transaction puts back what it
//! took. The memory-overflow path skips maybe-delivered records too.
//!
//! # Numbers
//! `seq` (the record number) orders records and keys the store; reserved ahead in blocks,
//! it is never published. Readings also get a published `(boot, seq)`: `boot` is counted
//! per start in the store's meta (made up from the clock, unix seconds, when the store
//! cannot be opened at start, and written to it once it can), `seq` counts readings from 1
//! per start and is assigned under the same lock as the record number.
//!
//! # Failing disk
//! Any store error (disk full, read-only directory, damage) leaves the records in memory,
//! logs once per episode, and is reported by [`Durable::status`]; records keep flowing to
//! the link (`always` mode stops waiting for commits), memory is bounded by `capacity`
//! (oldest dropped and counted), and the store is retried every [`RETRY_AFTER`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::clock::{describe_step, Clock, OsBoot, Queued, StepWatch, SystemClock};
use super::error::{BufferError, Result};
use super::store::{Limits, Now, Recovery, Stats, Store, Verdict};
use crate::config::{Buffer, Durability, Replay};
use crate::queue::{ReadingNumber, Record};

/// Sequence numbers reserved on disk ahead of use (see the store's invariants).
pub const SEQ_RESERVE_BLOCK: u64 = 65_536;
/// How long a failing store is left alone before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Records read from disk per replay read, and the history level that triggers the next.
const PREFETCH_BATCH: usize = 512;
const PREFETCH_LOW: usize = 128;
/// Acknowledged on-disk records are deleted once this many are pending or every
/// [`DELETE_EVERY`]: deletes rewrite the same leaf pages the commits just wrote, so
/// batching them is most of the SD-card saving in `always` mode. A crash in between
/// replays those records again (duplicates, at most this many).
const DELETE_BATCH: usize = 256;
const DELETE_EVERY: Duration = Duration::from_secs(10);
/// Age checks, on the settings' boot-time clock (so a test's clock drives them too).
const EXPIRE_EVERY_MS: u64 = 60_000;
/// Housekeeping period in `outage` mode.
const TICK: Duration = Duration::from_secs(1);

/// How the durable outbox behaves; built from `[buffer]` plus the memory bound.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub durability: Durability,
    pub commit_interval: Duration,
    pub limits: Limits,
    pub replay: Replay,
    pub replay_rate: Option<u32>,
    pub spill_threshold: usize,
    /// Bound on records held in memory (queued + history + in flight): `mqtt.queue_capacity`.
    pub capacity: usize,
    /// Wall and boot-time clocks; a [`super::clock::ManualClock`] in tests.
    pub clock: Arc<dyn Clock>,
}

impl Settings {
    pub fn new(buffer: &Buffer, capacity: usize) -> Settings {
        Settings {
            dir: buffer.path.clone(),
            durability: buffer.durability,
            commit_interval: buffer.commit_interval,
            limits: Limits {
                max_size: buffer.max_size,
                max_age: buffer.max_age,
                when_full: buffer.when_full,
            },
            replay: buffer.replay,
            replay_rate: buffer.replay_rate,
            spill_threshold: buffer.spill_threshold,
            capacity: capacity.max(1),
            clock: Arc::new(SystemClock::new()),
        }
    }
}

/// What the health topic reports about the buffer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `None` while the store works; else why readings are held in memory only.
    pub disk_error: Option<String>,
    pub memory_depth: usize,
    pub disk_depth: u64,
    pub dropped: u64,
    /// Set when the store was recovered from a damaged file at open.
    pub recovery: Option<Recovery>,
    /// The agent's boot epoch (`boot` in reading payloads).
    pub boot: u64,
}

impl Status {
    /// The `buffer` section of the health topic: these fields as JSON; the disk error is a
    /// trouble, so the topic tells at once that readings are held in memory only.
    pub fn health_section(&self) -> crate::health::Section {
        crate::health::Section {
            value: serde_json::to_value(self).unwrap_or_default(),
            trouble: self.disk_error.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    record: Record,
    /// Also on disk (committed or spilled).
    persisted: bool,
}

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        self.last = now;
    }
    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }
    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
    fn wait_for_one(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.001))
    }
}

#[derive(Debug)]
struct State {
    queued: VecDeque<Entry>,
    history: VecDeque<Record>,
    inflight: VecDeque<Entry>,
    next_seq: u64,
    seq_reserved: u64,
    /// The boot epoch; 0 until decided at open.
    boot: u64,
    next_reading: u64,
    /// Handed out when the link died and not acknowledged since: the broker may have them,
    /// so no bound ever drops them (see the store's "Maybe delivered").
    maybe_delivered: HashSet<u64>,
    /// Of those, the ones whose `sent` flag is not on disk yet.
    sent_unsaved: HashSet<u64>,
    newest_seq_by_topic: HashMap<String, u64>,
    /// Topics whose newest seq changed since it was last written to the store.
    newest_dirty: HashSet<String>,
    resident: HashSet<u64>,
    persisting: HashSet<u64>,
    to_delete: HashSet<u64>,
    deleting: HashSet<u64>,
    /// Acknowledged rows a bound's transaction is deleting (back to `to_delete` if it fails).
    freeing: HashSet<u64>,
    /// Records a bound's open transaction took out of memory, kept until it commits so a
    /// failed write can put them back.
    taken_by_bound: Vec<Entry>,
    /// Highest seq read back from disk since the last spill; reads continue after it.
    disk_cursor: u64,
    /// The disk may hold records not in memory (cleared when a read comes back short).
    disk_unread: bool,
    disk_depth: u64,
    /// `take` was called since the last `requeue_inflight`: replay reads may run.
    link_up: bool,
    spill_requested: bool,
    history_turn: bool,
    rate: Option<TokenBucket>,
    dropped_memory: u64,
    store_dropped: u64,
    /// Records the uplink gave up on (`discard`) and the store has not counted yet (it
    /// persists the count on the next I/O round, so it survives a restart).
    discarded: u64,
    overflowing: bool,
    /// Set while appends find the store at `max_size`, so the warning is logged once per
    /// episode; cleared by the first write that drops nothing.
    store_full: bool,
    /// Set while expiry runs drop readings, so that is logged once per episode.
    expiring: bool,
    disk_error: Option<String>,
    store_ok: bool,
    /// Kept here, not with the store: `status` (the health topic, once a second) must never
    /// wait behind the I/O thread, which holds the store for a whole disk write.
    recovery: Option<Recovery>,
}

impl State {
    fn memory_depth(&self) -> usize {
        self.queued.len() + self.history.len() + self.inflight.len()
    }
    fn takeable(&self, durability: Durability, e: &Entry) -> bool {
        durability == Durability::Outage || e.persisted || !self.store_ok
    }
    /// Drops `seq` from memory bookkeeping after it left memory but stays on disk.
    fn forget_resident(&mut self, seq: u64) {
        if self.resident.remove(&seq) {
            self.disk_cursor = self.disk_cursor.min(seq.saturating_sub(1));
            self.disk_unread = true;
        }
    }

    /// The memory side of a bound's [`Verdict`], given under this lock so that nothing is
    /// handed out or acknowledged between the answer and what it does: acknowledged rows
    /// are freed (no drop), rows on the wire or maybe delivered stay, everything else leaves
    /// memory now and is dropped (counted by the store in the same transaction).
    fn verdicts(&mut self, seqs: &[u64]) -> Vec<Verdict> {
        let on_wire: HashSet<u64> = self.inflight.iter().map(|e| e.record.seq).collect();
        let mut leaving = HashSet::new();
        let verdicts = seqs
            .iter()
            .map(|&seq| {
                if self.to_delete.remove(&seq) {
                    self.freeing.insert(seq);
                    Verdict::Acknowledged
                } else if on_wire.contains(&seq) || self.maybe_delivered.contains(&seq) {
                    Verdict::Keep
                } else {
                    if self.resident.remove(&seq) || self.persisting.contains(&seq) {
                        leaving.insert(seq);
                    }
                    Verdict::Drop
                }
            })
            .collect();
        if !leaving.is_empty() {
            for e in std::mem::take(&mut self.queued) {
                if leaving.contains(&e.record.seq) {
                    self.taken_by_bound.push(e);
                } else {
                    self.queued.push_back(e);
                }
            }
            for r in std::mem::take(&mut self.history) {
                if leaving.contains(&r.seq) {
                    self.taken_by_bound.push(Entry {
                        record: r,
                        persisted: true,
                    });
                } else {
                    self.history.push_back(r);
                }
            }
        }
        verdicts
    }

    /// A bound's transaction committed: what it took is gone for good.
    fn bound_committed(&mut self) {
        self.taken_by_bound.clear();
        self.freeing.clear();
    }

    /// A bound's transaction failed: nothing was deleted, so what it took comes back.
    fn bound_failed(&mut self) {
        self.to_delete.extend(self.freeing.drain());
        let mut back = std::mem::take(&mut self.taken_by_bound);
        if back.is_empty() {
            return;
        }
        for e in &back {
            if e.persisted {
                self.resident.insert(e.record.seq);
            }
        }
        back.extend(self.queued.drain(..));
        back.sort_by_key(|e| e.record.seq);
        self.queued = back.into();
    }
}

#[derive(Debug)]
struct Shared {
    settings: Settings,
    state: Mutex<State>,
    store: Mutex<StoreSlot>,
    notify: Notify,
    wake: (Mutex<WakeFlags>, Condvar),
}

#[derive(Debug)]
struct StoreSlot {
    store: Option<Store>,
    retry_at: Option<Instant>,
    last_commit: Instant,
    /// Boot-time clock (ms) of the last age check.
    last_expire: Option<u64>,
    last_delete: Instant,
    step_watch: StepWatch,
}

#[derive(Debug, Default)]
struct WakeFlags {
    woken: bool,
    stop: bool,
}

/// The durable outbox. Cheap to share (`Arc`); the I/O thread stops on `shutdown` or drop.
#[derive(Debug)]
pub struct Durable {
    shared: Arc<Shared>,
    io_thread: Mutex<Option<JoinHandle<()>>>,
}

/// Whether [`Durable`] runs its own I/O thread, or the caller drives [`Durable::io_step`]
/// (tests and benches, for deterministic interleavings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    Thread,
    Manual,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the buffer down with it: the data is still valid.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Durable {
    /// Opens the store in `settings.dir` (recovering a damaged file) and starts the I/O
    /// thread. Never fails: if the store cannot be opened the outbox runs from memory, says
    /// why in the log and in [`Durable::status`], and retries the store later.
    /// `fallback_first_seq` numbers records only when no store could be read.
    pub fn open(settings: Settings, fallback_first_seq: u64, driver: IoDriver) -> Durable {
        let mut state = State {
            queued: VecDeque::new(),
            history: VecDeque::new(),
            inflight: VecDeque::new(),
            next_seq: fallback_first_seq.max(1),
            seq_reserved: 0,
            boot: 0,
            next_reading: 1,
            maybe_delivered: HashSet::new(),
            sent_unsaved: HashSet::new(),
            newest_seq_by_topic: HashMap::new(),
            newest_dirty: HashSet::new(),
            resident: HashSet::new(),
            persisting: HashSet::new(),
            to_delete: HashSet::new(),
            deleting: HashSet::new(),
            freeing: HashSet::new(),
            taken_by_bound: Vec::new(),
            disk_cursor: 0,
            disk_unread: false,
            disk_depth: 0,
            link_up: false,
            spill_requested: false,
            history_turn: true,
            rate: settings.replay_rate.map(TokenBucket::new),
            dropped_memory: 0,
            store_dropped: 0,
            discarded: 0,
            overflowing: false,
            store_full: false,
            expiring: false,
            disk_error: None,
            store_ok: false,
            recovery: None,
        };
        let mut slot = StoreSlot {
            store: None,
            retry_at: None,
            last_commit: Instant::now(),
            last_expire: None,
            last_delete: Instant::now(),
            step_watch: StepWatch::new(),
        };
        slot.step_watch.look(settings.clock.as_ref());
        attach_store(&settings, &mut state, &mut slot);
        if state.boot == 0 {
            // Record numbers from memory must not collide with rows a previous run left
            // in the store once it comes back: the same clock floor as recovery uses.
            state.next_seq = state
                .next_seq
                .max(settings.clock.wall_ms().saturating_mul(1000));
            // No store to count starts in. The start time in unix seconds is far above any
            // counted epoch, so no (boot, seq) of an earlier start is reused; it is written
            // to the store once that works, so later starts count on from above it.
            state.boot = settings.clock.wall_ms() / 1000;
            tracing::warn!(
                boot = state.boot,
                "the buffer could not be opened at start: this start's boot epoch is made up \
                 from the clock; readings keep a unique (boot, seq)"
            );
        }
        let shared = Arc::new(Shared {
            settings,
            state: Mutex::new(state),
            store: Mutex::new(slot),
            notify: Notify::new(),
            wake: (Mutex::new(WakeFlags::default()), Condvar::new()),
        });
        let io_thread = match driver {
            IoDriver::Manual => None,
            IoDriver::Thread => {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("fieldlink-buffer".into())
                    .spawn(move || io_loop(&shared))
                    .map_err(|e| {
                        tracing::error!(
                            "cannot start the buffer I/O thread ({e}): running from memory"
                        )
                    })
                    .ok()
            }
        };
        Durable {
            shared,
            io_thread: Mutex::new(io_thread),
        }
    }

    /// Queues a record that carries no reading number (status, meta). Never blocks and
    /// never touches the disk.
    pub fn push(&self, topic: String, ts_ms: u64, payload: Vec<u8>) -> u64 {
        self.push_numbered(topic, ts_ms, false, |_| payload)
    }

    /// Queues a reading; `payload` is built with its [`ReadingNumber`] (this start's boot
    /// epoch, and 1, 2, 3… over the readings of this start). Returns the record's `seq`.
    pub fn push_reading(
        &self,
        topic: String,
        ts_ms: u64,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> u64 {
        self.push_numbered(topic, ts_ms, true, payload)
    }

    fn push_numbered(
        &self,
        topic: String,
        ts_ms: u64,
        reading: bool,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> u64 {
        let settings = &self.shared.settings;
        let queued_at = Queued {
            os_boot: OsBoot::This,
            boot_ms: settings.clock.boot_ms(),
        };
        let mut st = lock(&self.shared.state);
        let seq = st.next_seq;
        st.next_seq += 1;
        let number = ReadingNumber {
            boot: st.boot,
            seq: st.next_reading,
        };
        if reading {
            st.next_reading += 1;
        }
        st.newest_seq_by_topic.insert(topic.clone(), seq);
        if !st.newest_dirty.contains(&topic) {
            st.newest_dirty.insert(topic.clone());
        }
        st.queued.push_back(Entry {
            record: Record {
                seq,
                payload: payload(number),
                topic,
                ts_ms,
                queued_at,
            },
            persisted: false,
        });
        let mut wake = st.store_ok && st.next_seq + SEQ_RESERVE_BLOCK / 2 >= st.seq_reserved;
        if st.store_ok && st.memory_depth() > settings.spill_threshold && !st.spill_requested {
            st.spill_requested = true;
            wake = true;
        }
        self.enforce_capacity(&mut st);
        drop(st);
        self.shared.notify.notify_one();
        if wake {
            self.wake_io();
        }
        seq
    }

    /// Keeps memory within `capacity`: history first (it is on disk), then the oldest
    /// queued records (only those not on disk are lost, and counted).
    fn enforce_capacity(&self, st: &mut State) {
        let capacity = self.shared.settings.capacity;
        let mut dropped_now = 0;
        while st.memory_depth() > capacity {
            if let Some(r) = st.history.pop_back() {
                st.forget_resident(r.seq);
                continue;
            }
            // The newest stays; so does anything that may have reached the broker.
            let last = st.queued.len().saturating_sub(1);
            let Some(i) = st
                .queued
                .iter()
                .take(last)
                .position(|e| !st.maybe_delivered.contains(&e.record.seq))
            else {
                break;
            };
            let Some(e) = st.queued.remove(i) else {
                break;
            };
            if e.persisted {
                st.forget_resident(e.record.seq);
            } else {
                dropped_now += 1;
            }
        }
        if dropped_now > 0 {
            st.dropped_memory += dropped_now;
            if !st.overflowing {
                st.overflowing = true;
                tracing::warn!(
                    capacity,
                    disk_error = st.disk_error.as_deref().unwrap_or("none"),
                    "outbox full and the disk buffer cannot take the backlog: dropping the \
                     oldest readings (raise mqtt.queue_capacity, or fix the buffer directory)"
                );
            }
        } else if st.overflowing && st.memory_depth() < capacity / 2 {
            st.overflowing = false;
        }
    }

    /// Hands out up to `max` records and marks them in flight: alternately a batch of
    /// replayed history (oldest first, within the rate cap) and a batch of live records.
    pub fn take(&self, max: usize) -> Vec<Record> {
        let durability = self.shared.settings.durability;
        let mut st = lock(&self.shared.state);
        st.link_up = true;
        let now = Instant::now();
        let history_allowed = match st.rate.as_mut() {
            Some(bucket) => bucket.available(now),
            None => usize::MAX,
        };
        let history_ready = !st.history.is_empty() && history_allowed > 0;
        let live_ready = st
            .queued
            .front()
            .is_some_and(|e| st.takeable(durability, e));
        let mut batch = Vec::new();
        if history_ready && (st.history_turn || !live_ready) {
            let n = max.min(st.history.len()).min(history_allowed);
            for _ in 0..n {
                let Some(record) = st.history.pop_front() else {
                    break;
                };
                batch.push(record.clone());
                st.inflight.push_back(Entry {
                    record,
                    persisted: true,
                });
            }
            if let Some(bucket) = st.rate.as_mut() {
                bucket.spend(batch.len());
            }
            st.history_turn = false;
        } else if live_ready {
            while batch.len() < max {
                let Some(front) = st.queued.front() else {
                    break;
                };
                if !st.takeable(durability, front) {
                    break;
                }
                let Some(entry) = st.queued.pop_front() else {
                    break;
                };
                batch.push(entry.record.clone());
                st.inflight.push_back(entry);
            }
            st.history_turn = true;
        }
        let refill = st.store_ok && st.disk_unread && st.history.len() < PREFETCH_LOW;
        drop(st);
        if refill {
            self.wake_io();
        }
        batch
    }

    /// Resolves once `take` would hand out something. Like `take`, it tells the buffer the
    /// link is up (the uplink waits only when it can send), which starts replay reads.
    pub async fn wait_queued(&self) {
        loop {
            let notified = self.shared.notify.notified();
            let wait = {
                let durability = self.shared.settings.durability;
                let mut st = lock(&self.shared.state);
                if !st.link_up || (st.store_ok && st.disk_unread && st.history.is_empty()) {
                    st.link_up = true;
                    self.wake_io();
                }
                let live = st
                    .queued
                    .front()
                    .is_some_and(|e| st.takeable(durability, e));
                if live {
                    return;
                }
                if st.history.is_empty() {
                    None
                } else {
                    match st.rate.as_mut() {
                        None => return,
                        Some(bucket) => {
                            if bucket.available(Instant::now()) > 0 {
                                return;
                            }
                            Some(bucket.wait_for_one())
                        }
                    }
                }
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The broker acknowledged `seq`: forget it (and delete it from disk in the next batch).
    /// Unknown sequence numbers are ignored (a duplicate ack after a resend).
    pub fn ack(&self, seq: u64) -> bool {
        let mut st = lock(&self.shared.state);
        let Some(i) = st.inflight.iter().position(|e| e.record.seq == seq) else {
            return false;
        };
        let entry = st.inflight.remove(i);
        st.maybe_delivered.remove(&seq);
        st.sent_unsaved.remove(&seq);
        let on_disk = entry.is_some_and(|e| e.persisted) || st.persisting.contains(&seq);
        let mut wake = false;
        if on_disk {
            st.resident.remove(&seq);
            st.to_delete.insert(seq);
            wake = st.to_delete.len() >= DELETE_BATCH;
        }
        drop(st);
        if wake {
            self.wake_io();
        }
        true
    }

    /// Gives up on the in-flight record `seq` (the broker will never take it): it leaves as
    /// an acknowledged one does (deleted from disk in the next batch) and is counted as
    /// dropped. False if `seq` is not in flight.
    pub fn discard(&self, seq: u64) -> bool {
        if !self.ack(seq) {
            return false;
        }
        lock(&self.shared.state).discarded += 1;
        self.wake_io();
        true
    }

    /// The link died: every unacknowledged record goes back to the head of the queue, in
    /// seq order, and (with a store) everything held in memory is spilled to disk.
    pub fn requeue_inflight(&self) -> usize {
        let mut st = lock(&self.shared.state);
        st.link_up = false;
        let mut inflight: Vec<Entry> = std::mem::take(&mut st.inflight).into();
        let n = inflight.len();
        inflight.sort_by_key(|e| e.record.seq);
        for e in &inflight {
            st.maybe_delivered.insert(e.record.seq);
            st.sent_unsaved.insert(e.record.seq);
        }
        for entry in inflight.into_iter().rev() {
            st.queued.push_front(entry);
        }
        let spill = st.store_ok;
        st.spill_requested |= spill;
        drop(st);
        if n > 0 {
            self.shared.notify.notify_one();
        }
        if spill {
            self.wake_io();
        }
        n
    }

    /// Asks the I/O thread to write everything held in memory to disk now.
    pub fn spill(&self) {
        lock(&self.shared.state).spill_requested = true;
        self.wake_io();
    }

    /// True when no newer record for the same topic is known: only such a record may be
    /// published retained.
    pub fn is_newest(&self, record: &Record) -> bool {
        let st = lock(&self.shared.state);
        st.newest_seq_by_topic
            .get(&record.topic)
            .is_none_or(|&s| s <= record.seq)
    }

    /// The record number the next `push` gets (internal: ordering and the store's key).
    pub fn next_seq(&self) -> u64 {
        lock(&self.shared.state).next_seq
    }

    /// The number of the last reading pushed in this start (`seq` 0: none yet).
    pub fn last_reading(&self) -> ReadingNumber {
        let st = lock(&self.shared.state);
        ReadingNumber {
            boot: st.boot,
            seq: st.next_reading - 1,
        }
    }

    /// Records not yet acknowledged, in memory and on disk.
    pub fn depth(&self) -> usize {
        let st = lock(&self.shared.state);
        let on_disk_only = st
            .disk_depth
            .saturating_sub((st.resident.len() + st.to_delete.len() + st.deleting.len()) as u64);
        st.memory_depth() + on_disk_only as usize
    }

    pub fn inflight(&self) -> usize {
        lock(&self.shared.state).inflight.len()
    }

    /// Records lost unpublished: memory overflow, the store's full and age drops, and the
    /// records the uplink gave up on.
    pub fn dropped(&self) -> u64 {
        let st = lock(&self.shared.state);
        st.dropped_memory + st.store_dropped + st.discarded
    }

    pub fn status(&self) -> Status {
        let st = lock(&self.shared.state);
        let recovery = st.recovery.clone();
        Status {
            disk_error: st.disk_error.clone(),
            memory_depth: st.memory_depth(),
            disk_depth: st.disk_depth,
            dropped: st.dropped_memory + st.store_dropped + st.discarded,
            recovery,
            boot: st.boot,
        }
    }

    /// The store's figures (`None` while it is unavailable).
    pub fn stats(&self) -> Option<Result<Stats>> {
        lock(&self.shared.store).store.as_ref().map(|s| s.stats())
    }

    /// Stops the I/O thread, writes every record still in memory (queued and in flight),
    /// and closes the store. Call once on the way out; dropping without it is a crash.
    pub fn shutdown(&self) -> Result<()> {
        self.stop_thread();
        lock(&self.shared.state).spill_requested = true;
        let outcome = io_step(&self.shared, true);
        let mut slot = lock(&self.shared.store);
        slot.store = None;
        outcome
    }

    /// One round of disk work: reservation, commit or spill, deletes, expiry, replay read.
    /// The I/O thread calls it; with [`IoDriver::Manual`] the caller does.
    pub fn io_step(&self) -> Result<()> {
        io_step(&self.shared, false)
    }

    fn wake_io(&self) {
        let (flags, cv) = &self.shared.wake;
        lock(flags).woken = true;
        cv.notify_one();
    }

    fn stop_thread(&self) {
        let handle = lock(&self.io_thread).take();
        if let Some(handle) = handle {
            let (flags, cv) = &self.shared.wake;
            lock(flags).stop = true;
            cv.notify_one();
            let _ = handle.join();
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn io_loop(shared: &Shared) {
    let tick = match shared.settings.durability {
        Durability::Always => shared.settings.commit_interval.min(TICK),
        Durability::Outage => TICK,
    };
    loop {
        // In always mode sleep only until the next commit is due: after an early wake
        // (an ack batch, a replay read) a full `tick` would stretch the gap between
        // commits towards two intervals, and with it what a power cut can lose.
        let wait = match shared.settings.durability {
            Durability::Always => {
                let since = lock(&shared.store).last_commit.elapsed();
                shared
                    .settings
                    .commit_interval
                    .saturating_sub(since)
                    .clamp(Duration::from_millis(1), tick)
            }
            Durability::Outage => tick,
        };
        {
            let (flags, cv) = &shared.wake;
            let mut f = lock(flags);
            if !f.woken && !f.stop {
                f = cv
                    .wait_timeout(f, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if f.stop {
                return;
            }
            f.woken = false;
        }
        // Errors are recorded in the state (and logged once) by io_step itself.
        let _ = io_step(shared, false);
    }
}

/// Opens the store and seeds the memory state from it; on failure leaves the state in
/// memory-only mode with the reason.
fn attach_store(settings: &Settings, st: &mut State, slot: &mut StoreSlot) {
    let clock = settings.clock.as_ref();
    let opened = Store::open(&settings.dir, settings.limits).and_then(|(mut store, recovery)| {
        let latest = store.newest_per_topic()?;
        let start = store.next_seq().max(st.next_seq);
        store.reserve_seqs(start + SEQ_RESERVE_BLOCK)?;
        store.enter_os_boot(&clock.os_boot_id(), clock.boot_ms())?;
        let boot = if st.boot == 0 {
            store.next_boot(0)?
        } else {
            // Reopened after damage, or the epoch was made up while the store was away.
            store.raise_boot(st.boot)?;
            st.boot
        };
        let sent = store.maybe_delivered()?;
        Ok((store, recovery, latest, start, boot, sent))
    });
    match opened {
        Ok((store, recovery, latest, start, boot, sent)) => {
            st.boot = boot;
            st.maybe_delivered.extend(sent);
            for (topic, seq) in latest {
                let newest = st.newest_seq_by_topic.entry(topic).or_insert(seq);
                *newest = (*newest).max(seq);
            }
            // After a reopen (recovery of a damaged file) nothing in memory is known to be
            // in this store: write it all again (INSERT OR IGNORE makes that harmless).
            let history: Vec<Record> = st.history.drain(..).collect();
            for e in st.queued.iter_mut().chain(st.inflight.iter_mut()) {
                e.persisted = false;
            }
            for record in history.into_iter().rev() {
                st.queued.push_front(Entry {
                    record,
                    persisted: false,
                });
            }
            st.resident.clear();
            // Numbers handed out from memory while the store was away stay unique.
            st.next_seq = st.next_seq.max(start);
            st.seq_reserved = store.next_seq();
            st.disk_depth = store.depth();
            st.disk_unread = store.depth() > 0;
            st.disk_cursor = 0;
            st.store_dropped = store.dropped_total();
            if st.disk_error.take().is_some() {
                tracing::info!(path = %store.path().display(), "buffer store usable again");
            }
            st.store_ok = true;
            // Back from a failure with the link down: what piled up in memory goes to disk.
            st.spill_requested = st.memory_depth() > 0 && !st.link_up;
            slot.store = Some(store);
            slot.retry_at = None;
            if recovery.is_some() {
                st.recovery = recovery;
            }
        }
        Err(e) => {
            note_failure(st, &e);
            st.store_ok = false;
            slot.store = None;
            slot.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
    }
}

fn note_failure(st: &mut State, err: &BufferError) {
    let message = err.to_string();
    if st.disk_error.is_none() {
        tracing::error!("disk buffer unavailable: {message}");
    }
    st.disk_error = Some(message);
}

fn io_step(shared: &Shared, final_flush: bool) -> Result<()> {
    let settings = &shared.settings;
    let mut slot = lock(&shared.store);
    if let Some(step) = slot.step_watch.look(settings.clock.as_ref()) {
        tracing::warn!(
            "the wall clock stepped {} (NTP sync or a manual change): buffered readings keep \
             their age by the boot-time clock, so max_age is unaffected; readings keep the \
             ts they were stamped with",
            describe_step(step)
        );
    }
    if slot.store.is_none() {
        let due = slot.retry_at.is_none_or(|t| Instant::now() >= t) || final_flush;
        if due {
            let mut st = lock(&shared.state);
            attach_store(settings, &mut st, &mut slot);
        }
    }
    let slot = &mut *slot;
    let backing_off = slot.retry_at.is_some_and(|t| Instant::now() < t);
    if backing_off && !final_flush {
        // A failing disk is left alone until the retry time: memory serves meanwhile.
        let st = lock(&shared.state);
        return Err(BufferError::Io {
            path: settings.dir.clone(),
            detail: st.disk_error.clone().unwrap_or_default(),
        });
    }
    let Some(store) = slot.store.as_mut() else {
        let st = lock(&shared.state);
        return Err(BufferError::Io {
            path: settings.dir.clone(),
            detail: st.disk_error.clone().unwrap_or_default(),
        });
    };
    let timers = Timers {
        last_commit: &mut slot.last_commit,
        last_expire: &mut slot.last_expire,
        last_delete: &mut slot.last_delete,
    };
    let result = io_work(shared, store, timers, final_flush);
    match result {
        Ok(()) => {
            slot.retry_at = None;
            let mut st = lock(&shared.state);
            if st.disk_error.take().is_some() {
                tracing::info!(path = %store.path().display(), "buffer store writable again");
            }
            st.store_ok = true;
            Ok(())
        }
        Err(e) => {
            let mut st = lock(&shared.state);
            st.persisting.clear();
            note_failure(&mut st, &e);
            st.store_ok = false;
            if e.is_corrupt() {
                // Reopening runs recovery; what is in memory is written after it.
                slot.store = None;
                slot.retry_at = None;
            } else {
                slot.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
            drop(st);
            shared.notify.notify_one();
            Err(e)
        }
    }
}

/// Deletes the acknowledged records that are on disk, when a batch is due (or `force`).
fn delete_acknowledged(
    shared: &Shared,
    store: &mut Store,
    force: bool,
    last_delete: &mut Instant,
    now: Instant,
) -> Result<()> {
    let doomed: Vec<u64> = {
        let mut st = lock(&shared.state);
        let due = force
            || st.to_delete.len() >= DELETE_BATCH
            || now.saturating_duration_since(*last_delete) >= DELETE_EVERY;
        if due {
            *last_delete = now;
        }
        let doomed: Vec<u64> = if due {
            std::mem::take(&mut st.to_delete).into_iter().collect()
        } else {
            Vec::new()
        };
        st.deleting.extend(doomed.iter().copied());
        doomed
    };
    let deleted = store.delete(&doomed);
    let mut st = lock(&shared.state);
    st.deleting.clear();
    if deleted.is_err() {
        st.to_delete.extend(doomed);
    }
    deleted.map(|_| ())
}

struct Timers<'a> {
    last_commit: &'a mut Instant,
    last_expire: &'a mut Option<u64>,
    last_delete: &'a mut Instant,
}

fn io_work(
    shared: &Shared,
    store: &mut Store,
    timers: Timers<'_>,
    final_flush: bool,
) -> Result<()> {
    let settings = &shared.settings;
    let now = Instant::now();

    // 0. A write that overflows `max_size` makes room. Acknowledged rows still waiting for
    // their batched delete go first, all of them: the bound would otherwise drop an unsent
    // older record while delivered newer ones hold space. (Acks after this point are still
    // told apart by the verdicts below; they just free less.)
    let overflowing_write = {
        let st = lock(&shared.state);
        let commit_due = settings.durability == Durability::Always
            && now.saturating_duration_since(*timers.last_commit) >= settings.commit_interval;
        let write_due = st.spill_requested || final_flush || commit_due;
        write_due && !st.to_delete.is_empty() && {
            let incoming: u64 = st
                .inflight
                .iter()
                .chain(st.queued.iter())
                .filter(|e| !e.persisted)
                .map(|e| super::store::row_bytes(&e.record.topic, &e.record.payload))
                .sum();
            store.stored_bytes() + incoming > settings.limits.max_size
        }
    };
    if overflowing_write {
        delete_acknowledged(shared, store, true, timers.last_delete, now)?;
    }

    // 1. Write: a spill (everything not on disk, then drop queued copies from memory) or,
    // in `always` mode, the periodic commit. The bound asks the memory state about every
    // record it wants gone, under the state lock, inside the store's transaction.
    let (batch, spill, sent, newest) = {
        let mut st = lock(&shared.state);
        let spill = st.spill_requested || final_flush;
        let commit_due = settings.durability == Durability::Always
            && now.saturating_duration_since(*timers.last_commit) >= settings.commit_interval;
        let mut batch = Vec::new();
        if spill || commit_due {
            for e in st.inflight.iter().chain(st.queued.iter()) {
                if !e.persisted {
                    batch.push(e.record.clone());
                }
            }
            batch.sort_by_key(|r| r.seq);
            for r in &batch {
                st.persisting.insert(r.seq);
            }
        }
        st.spill_requested = false;
        let sent: HashSet<u64> = if spill || commit_due {
            st.sent_unsaved.clone()
        } else {
            HashSet::new()
        };
        let newest: Vec<(String, u64)> = if spill || commit_due {
            let dirty = std::mem::take(&mut st.newest_dirty);
            dirty
                .into_iter()
                .filter_map(|t| st.newest_seq_by_topic.get(&t).map(|&s| (t, s)))
                .collect()
        } else {
            Vec::new()
        };
        (batch, spill, sent, newest)
    };
    if settings.durability == Durability::Always || spill {
        *timers.last_commit = now;
    }
    let mut decide = |seqs: &[u64]| lock(&shared.state).verdicts(seqs);
    let appended = match store
        .append(&batch, &sent, &mut decide)
        .and_then(|a| store.note_newest(&newest).map(|()| a))
    {
        Ok(a) => a,
        Err(e) => {
            let mut st = lock(&shared.state);
            st.bound_failed();
            st.spill_requested |= spill;
            st.newest_dirty.extend(newest.into_iter().map(|(t, _)| t));
            return Err(e);
        }
    };
    {
        let mut st = lock(&shared.state);
        st.bound_committed();
        st.persisting.clear();
        // With the memory changes below, under one lock: `depth` never sees a record
        // that left memory for the disk as gone, and `dropped` catches up with what the
        // verdicts took out of memory.
        st.disk_depth = store.depth();
        st.store_dropped = store.dropped_total();
        for seq in &sent {
            st.sent_unsaved.remove(seq);
        }
        let stored: HashSet<u64> = appended.stored.iter().copied().collect();
        let st = &mut *st;
        let dropped_now = appended.rejected.len() + appended.evicted.len();
        if dropped_now > 0 && !st.store_full {
            st.store_full = true;
            tracing::warn!(
                max_size = settings.limits.max_size,
                when_full = ?settings.limits.when_full,
                dropped = dropped_now,
                "buffer full: dropping readings ({}) until the link drains it; raise [buffer] \
                 max_size to hold a longer outage",
                match settings.limits.when_full {
                    crate::config::WhenFull::DropOldest => "the oldest",
                    crate::config::WhenFull::DropNewest => "the newest",
                }
            );
        } else if dropped_now == 0
            && st.store_full
            && store.stored_bytes() <= full_episode_ends_below(settings.limits.max_size)
        {
            st.store_full = false;
            tracing::info!("buffer no longer full: readings are kept again");
        }
        for e in st.inflight.iter_mut().chain(st.queued.iter_mut()) {
            if stored.contains(&e.record.seq) {
                e.persisted = true;
                st.resident.insert(e.record.seq);
            }
        }
        if spill {
            let mut evicted = Vec::new();
            st.queued.retain(|e| {
                if e.persisted {
                    evicted.push(e.record.seq);
                }
                !e.persisted
            });
            evicted.extend(st.history.drain(..).map(|r| r.seq));
            for seq in evicted {
                st.resident.remove(&seq);
            }
            st.disk_cursor = 0;
            st.disk_unread = true;
        }
    }
    shared.notify.notify_one();

    // 2. Deletes of acknowledged records.
    delete_acknowledged(shared, store, spill || final_flush, timers.last_delete, now)?;

    // 3. Age bound, on the boot-time clock (see the store's "Age").
    let at = Now {
        wall_ms: settings.clock.wall_ms(),
        boot_ms: settings.clock.boot_ms(),
    };
    let expire_due = timers
        .last_expire
        .is_none_or(|t| at.boot_ms.saturating_sub(t) >= EXPIRE_EVERY_MS);
    if expire_due && store.depth() > 0 {
        *timers.last_expire = Some(at.boot_ms);
        let mut decide = |seqs: &[u64]| lock(&shared.state).verdicts(seqs);
        let expired = store.expire(at, &mut decide);
        let mut st = lock(&shared.state);
        match &expired {
            Ok(_) => st.bound_committed(),
            Err(_) => st.bound_failed(),
        }
        st.disk_depth = store.depth();
        st.store_dropped = store.dropped_total();
        let expired = expired?;
        if !expired.is_empty() && !st.expiring {
            st.expiring = true;
            tracing::warn!(
                dropped = expired.len(),
                max_age = %humantime::format_duration(settings.limits.max_age),
                "dropping buffered readings older than max_age (the link has been down that \
                 long); raise [buffer] max_age to keep them longer"
            );
        } else if expired.is_empty() && st.expiring {
            st.expiring = false;
        }
    }

    // 4. Sequence numbers reserved ahead, so a crash never leads to reuse.
    let reserve_to = {
        let st = lock(&shared.state);
        (st.next_seq + SEQ_RESERVE_BLOCK / 2 >= st.seq_reserved)
            .then_some(st.next_seq + SEQ_RESERVE_BLOCK)
    };
    if let Some(upto) = reserve_to {
        store.reserve_seqs(upto)?;
        lock(&shared.state).seq_reserved = upto;
    }

    // 5. Replay: read the next stored records while the link is up.
    let read_from = {
        let st = lock(&shared.state);
        (st.link_up && st.disk_unread && st.history.len() < PREFETCH_LOW && !final_flush)
            .then_some(st.disk_cursor)
    };
    if let Some(after) = read_from {
        if after == 0 && settings.replay == Replay::Latest {
            // Maybe-delivered records go again even if superseded: only their ack retires
            // them from `maybe_delivered`.
            let protect: HashSet<u64> = {
                let st = lock(&shared.state);
                st.resident.union(&st.maybe_delivered).copied().collect()
            };
            store.prune_superseded(&protect)?;
        }
        let rows = store.read_after(after, PREFETCH_BATCH)?;
        let mut st = lock(&shared.state);
        if rows.len() < PREFETCH_BATCH {
            st.disk_unread = false;
        }
        for r in rows {
            st.disk_cursor = st.disk_cursor.max(r.seq);
            let skip = st.resident.contains(&r.seq)
                || st.deleting.contains(&r.seq)
                || st.to_delete.contains(&r.seq);
            if !skip {
                st.resident.insert(r.seq);
                st.history.push_back(r);
            }
        }
        drop(st);
        shared.notify.notify_one();
    }

    // 6. Records given up since the last round are counted on disk.
    // Moved from memory to the store's count under one lock, so `dropped` never dips.
    let given_up = lock(&shared.state).discarded;
    let noted = store.note_given_up(given_up);
    let mut st = lock(&shared.state);
    if noted.is_ok() {
        st.discarded -= given_up;
    }
    st.disk_depth = store.depth();
    st.store_dropped = store.dropped_total();
    noted
}

/// A full episode ends only once the link has drained a tenth of the bound: when the link
/// drains about as fast as the devices produce, the store sits at its bound and a single
/// batch without a drop would otherwise end the episode, and the next one start it again,
/// every second or so (seen on a slow gateway: 25 warnings in 70 s).
fn full_episode_ends_below(max_size: u64) -> u64 {
    max_size - max_size / 10
}
