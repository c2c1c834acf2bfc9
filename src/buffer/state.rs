//! The outbox's memory and every decision it makes, without I/O: no clock is read here
//! (each decision takes `now`), no file is touched, no lock is taken. The API
//! ([`super::outbox`]) calls it under its lock; the I/O module (`io`) asks it for
//! a [`Plan`] of the next disk round, executes that against the store and reports back.
//!
//! # Where a record is
//! - `queued`: pushed (or put back by `requeue_inflight`), waiting for `take`.
//! - `history`: read back from disk for replay, waiting for `take`.
//! - `inflight`: handed out, waiting for `ack`.
//! - on disk only: spilled or committed, not in memory. `resident` holds the seqs that are
//!   both on disk and in memory, so a replay read never hands out a record twice.
//!
//! # Drops are exact
//! A bound (`max_size`, `max_age`) never drops from a snapshot: inside its transaction the
//! store asks [`State::verdicts`] about each candidate under the outbox lock, which frees
//! acknowledged rows (no drop), keeps what is in flight or maybe delivered (on the wire
//! when the link died: `maybe_delivered`, persisted as the store's `sent` flag), and takes
//! everything else out of memory at that moment, so nothing can hand it out afterwards;
//! the store counts it in the same transaction. A failed transaction puts back what it
//! took. The memory-overflow path skips maybe-delivered records too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::Queued;
pub use super::plan::{Opened, Plan, Read, Ready, StoreAfter};
use super::rate::TokenBucket;
use super::record::{ReadingNumber, Record};
use super::recover::Recovery;
pub use super::rules::Rules;
pub use super::status::Status;
use super::store::{Appended, Verdict};
use crate::config::{Durability, Replay, WhenFull};

/// Sequence numbers reserved on disk ahead of use (see the store's invariants).
pub const SEQ_RESERVE_BLOCK: u64 = 65_536;
/// How long a failing store is left alone before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Records read from disk per replay read, and the history level that triggers the next.
pub const PREFETCH_BATCH: usize = 512;
const PREFETCH_LOW: usize = 128;
/// Acknowledged on-disk records are deleted once this many are pending or every
/// [`DELETE_EVERY`]: deletes rewrite the same leaf pages the commits just wrote, so
/// batching them saves SD-card wear. A crash in between replays those records again
/// (duplicates, at most this many). In `always` mode they wait for the next commit instead
/// and go in its transaction (see `io`): one commit per `commit_interval` in all.
pub const DELETE_BATCH: usize = 256;
pub const DELETE_EVERY: Duration = Duration::from_secs(10);
/// Age checks, on the boot-time clock (so a test's clock drives them too).
pub const EXPIRE_EVERY_MS: u64 = 60_000;

#[derive(Debug, Clone)]
struct Entry {
    record: Record,
    /// Also on disk (committed or spilled).
    persisted: bool,
}

#[derive(Debug)]
pub struct State {
    rules: Rules,
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
    newest_seq_by_topic: HashMap<Arc<str>, u64>,
    /// Topics whose newest seq changed since it was last written to the store.
    newest_dirty: HashSet<Arc<str>>,
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
    /// A failing store is left alone until then (`None`: try it on the next round).
    retry_at: Option<Instant>,
    last_commit: Instant,
    last_delete: Instant,
    /// Boot-time clock (ms) of the last age check.
    last_expire: Option<u64>,
}

impl State {
    /// An empty outbox whose record numbers start at `first_seq`; `boot` 0 means the store
    /// decides it when it is attached.
    pub fn new(rules: Rules, first_seq: u64, boot: u64, now: Instant) -> State {
        State {
            queued: VecDeque::new(),
            history: VecDeque::new(),
            inflight: VecDeque::new(),
            next_seq: first_seq.max(1),
            seq_reserved: 0,
            boot,
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
            rate: rules.replay_rate.map(|r| TokenBucket::new(r, now)),
            dropped_memory: 0,
            store_dropped: 0,
            discarded: 0,
            overflowing: false,
            store_full: false,
            expiring: false,
            disk_error: None,
            store_ok: false,
            recovery: None,
            retry_at: None,
            last_commit: now,
            last_delete: now,
            last_expire: None,
            rules,
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    fn memory_depth(&self) -> usize {
        self.queued.len() + self.history.len() + self.inflight.len()
    }

    fn takeable(&self, e: &Entry) -> bool {
        self.rules.durability == Durability::Outage || e.persisted || !self.store_ok
    }

    /// Drops `seq` from memory bookkeeping after it left memory but stays on disk.
    fn forget_resident(&mut self, seq: u64) {
        if self.resident.remove(&seq) {
            self.disk_cursor = self.disk_cursor.min(seq.saturating_sub(1));
            self.disk_unread = true;
        }
    }

    /// The store could not be opened at start: this start's numbers are made up so that
    /// they collide with nothing a previous run stored or published.
    pub fn without_store_at_start(&mut self, wall_ms: u64) {
        // Record numbers from memory must not collide with rows a previous run left
        // in the store once it comes back: the same clock floor as recovery uses.
        self.next_seq = self.next_seq.max(wall_ms.saturating_mul(1000));
        // No store to count starts in. The start time in unix seconds is far above any
        // counted epoch, so no (boot, seq) of an earlier start is reused; it is written
        // to the store once that works, so later starts count on from above it.
        self.boot = wall_ms / 1000;
        tracing::warn!(
            boot = self.boot,
            "the buffer could not be opened at start: this start's boot epoch is made up \
             from the clock; readings keep a unique (boot, seq)"
        );
    }

    /// Queues a record; `payload` is built with its [`ReadingNumber`] (which only readings
    /// consume). Returns the record's `seq` and whether the I/O round should run now.
    pub fn push(
        &mut self,
        topic: Arc<str>,
        ts_ms: u64,
        reading: bool,
        queued_at: Queued,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> (u64, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let number = ReadingNumber {
            boot: self.boot,
            seq: self.next_reading,
        };
        if reading {
            self.next_reading += 1;
        }
        // A gateway publishes the same few hundred topics over and over: update in place
        // rather than allocating a key copy per reading.
        match self.newest_seq_by_topic.get_mut(&topic) {
            Some(newest) => *newest = seq,
            None => {
                self.newest_seq_by_topic.insert(topic.clone(), seq);
            }
        }
        if self.rules.disk && !self.newest_dirty.contains(&topic) {
            self.newest_dirty.insert(topic.clone());
        }
        self.queued.push_back(Entry {
            record: Record {
                seq,
                payload: payload(number).into(),
                topic,
                ts_ms,
                queued_at,
            },
            persisted: false,
        });
        let mut wake = self.store_ok && self.next_seq + SEQ_RESERVE_BLOCK / 2 >= self.seq_reserved;
        if self.store_ok
            && self.memory_depth() > self.rules.spill_threshold
            && !self.spill_requested
        {
            self.spill_requested = true;
            wake = true;
        }
        self.enforce_capacity();
        (seq, wake)
    }

    /// Keeps memory within `capacity`: history first (it is on disk), then the oldest
    /// queued records (only those not on disk are lost, and counted). The newest stays; so
    /// does anything that may have reached the broker.
    fn enforce_capacity(&mut self) {
        let capacity = self.rules.capacity;
        let mut dropped_now = 0;
        while self.memory_depth() > capacity {
            if let Some(r) = self.history.pop_back() {
                self.forget_resident(r.seq);
                continue;
            }
            let last = self.queued.len().saturating_sub(1);
            let Some(i) = self
                .queued
                .iter()
                .take(last)
                .position(|e| !self.maybe_delivered.contains(&e.record.seq))
            else {
                break;
            };
            let Some(e) = self.queued.remove(i) else {
                break;
            };
            if e.persisted {
                self.forget_resident(e.record.seq);
            } else {
                dropped_now += 1;
            }
        }
        if dropped_now > 0 {
            self.dropped_memory += dropped_now;
            if !self.overflowing {
                self.overflowing = true;
                if self.rules.disk {
                    tracing::warn!(
                        capacity,
                        disk_error = self.disk_error.as_deref().unwrap_or("none"),
                        "outbox full and the disk buffer cannot take the backlog: dropping \
                         the oldest readings (raise mqtt.queue_capacity, or fix the buffer \
                         directory)"
                    );
                } else {
                    tracing::warn!(
                        capacity,
                        "outbox full: dropping the oldest readings until the link drains it \
                         (raise mqtt.queue_capacity to hold a longer outage)"
                    );
                }
            }
        } else if self.overflowing && self.memory_depth() < capacity / 2 {
            self.overflowing = false;
        }
    }

    /// Hands out up to `max` records and marks them in flight: alternately a batch of
    /// replayed history (oldest first, within the rate cap at `now`) and a batch of live
    /// records. Also says whether a replay read should be started.
    pub fn take(&mut self, now: Instant, max: usize) -> (Vec<Record>, bool) {
        self.link_up = true;
        let history_allowed = match self.rate.as_mut() {
            Some(bucket) => bucket.available(now),
            None => usize::MAX,
        };
        let history_ready = !self.history.is_empty() && history_allowed > 0;
        let live_ready = self.queued.front().is_some_and(|e| self.takeable(e));
        let available = self.history.len().max(self.queued.len());
        let mut batch = Vec::with_capacity(max.min(available));
        if history_ready && (self.history_turn || !live_ready) {
            let n = max.min(self.history.len()).min(history_allowed);
            for _ in 0..n {
                let Some(record) = self.history.pop_front() else {
                    break;
                };
                batch.push(record.clone());
                self.inflight.push_back(Entry {
                    record,
                    persisted: true,
                });
            }
            if let Some(bucket) = self.rate.as_mut() {
                bucket.spend(batch.len());
            }
            self.history_turn = false;
        } else if live_ready {
            while batch.len() < max {
                let Some(front) = self.queued.front() else {
                    break;
                };
                if !self.takeable(front) {
                    break;
                }
                let Some(entry) = self.queued.pop_front() else {
                    break;
                };
                batch.push(entry.record.clone());
                self.inflight.push_back(entry);
            }
            self.history_turn = true;
        }
        let refill = self.store_ok && self.disk_unread && self.history.len() < PREFETCH_LOW;
        (batch, refill)
    }

    /// Whether `take` at `now` would hand out something. Like `take`, it tells the outbox
    /// the link is up (the uplink waits only when it can send), which starts replay reads;
    /// the flag says the I/O round should run for that.
    pub fn ready(&mut self, now: Instant) -> (Ready, bool) {
        let mut wake = false;
        if !self.link_up || (self.store_ok && self.disk_unread && self.history.is_empty()) {
            self.link_up = true;
            wake = true;
        }
        if self.queued.front().is_some_and(|e| self.takeable(e)) {
            return (Ready::Now, wake);
        }
        if self.history.is_empty() {
            return (Ready::OnNotify, wake);
        }
        let ready = match self.rate.as_mut() {
            None => Ready::Now,
            Some(bucket) => {
                if bucket.available(now) > 0 {
                    Ready::Now
                } else {
                    Ready::After(bucket.wait_for_one())
                }
            }
        };
        (ready, wake)
    }

    /// The broker acknowledged `seq`: forget it (and delete it from disk in the next
    /// batch). `None` if it is not in flight (a duplicate ack after a resend); else whether
    /// a delete batch is full.
    pub fn ack(&mut self, seq: u64) -> Option<bool> {
        let i = self.inflight.iter().position(|e| e.record.seq == seq)?;
        let entry = self.inflight.remove(i);
        self.maybe_delivered.remove(&seq);
        self.sent_unsaved.remove(&seq);
        let on_disk = entry.is_some_and(|e| e.persisted) || self.persisting.contains(&seq);
        let mut wake = false;
        if on_disk {
            self.resident.remove(&seq);
            self.to_delete.insert(seq);
            wake = self.to_delete.len() >= DELETE_BATCH && !self.deletes_wait_for_commits();
        }
        Some(wake)
    }

    /// Gives up on the in-flight record `seq` (the broker will never take it): it leaves as
    /// an acknowledged one does and is counted as dropped. False if `seq` is not in flight.
    pub fn discard(&mut self, seq: u64) -> bool {
        if self.ack(seq).is_none() {
            return false;
        }
        self.discarded += 1;
        true
    }

    /// The link died: every unacknowledged record goes back to the head of the queue, in
    /// seq order, and (with a store) everything held in memory is to be spilled. Returns
    /// how many went back and whether a spill was asked for.
    pub fn requeue_inflight(&mut self) -> (usize, bool) {
        self.link_up = false;
        let mut inflight: Vec<Entry> = std::mem::take(&mut self.inflight).into();
        let n = inflight.len();
        inflight.sort_by_key(|e| e.record.seq);
        for e in &inflight {
            self.maybe_delivered.insert(e.record.seq);
            if self.rules.disk {
                self.sent_unsaved.insert(e.record.seq);
            }
        }
        for entry in inflight.into_iter().rev() {
            self.queued.push_front(entry);
        }
        let spill = self.store_ok;
        self.spill_requested |= spill;
        (n, spill)
    }

    pub fn request_spill(&mut self) {
        self.spill_requested = true;
    }

    /// True when no newer record for the same topic is known: only such a record may be
    /// published retained.
    pub fn is_newest(&self, record: &Record) -> bool {
        self.newest_seq_by_topic
            .get(&record.topic)
            .is_none_or(|&s| s <= record.seq)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn last_reading(&self) -> ReadingNumber {
        ReadingNumber {
            boot: self.boot,
            seq: self.next_reading - 1,
        }
    }

    /// Records not yet acknowledged, in memory and on disk.
    pub fn depth(&self) -> usize {
        // Acknowledged while the planned write stores it: not in `disk_depth` yet. Counting
        // it let a long spill, acknowledged as it was written, hide as many unsent rows (the
        // uplink's drain on shutdown stopped with them on disk).
        let acked_on_disk = self
            .to_delete
            .iter()
            .filter(|seq| !self.persisting.contains(seq))
            .count();
        let on_disk_only = self
            .disk_depth
            .saturating_sub((self.resident.len() + acked_on_disk + self.deleting.len()) as u64);
        self.memory_depth() + on_disk_only as usize
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Records lost unpublished: memory overflow, the store's full and age drops, and the
    /// records the uplink gave up on.
    pub fn dropped(&self) -> u64 {
        self.dropped_memory + self.store_dropped + self.discarded
    }

    pub fn status(&self) -> Status {
        Status {
            disk_error: self.disk_error.clone(),
            memory_depth: self.memory_depth(),
            disk_depth: self.disk_depth,
            dropped: self.dropped(),
            recovery: self.recovery.clone(),
            boot: self.boot,
        }
    }

    /// Whether the disk may be touched at `now`: a failing one is left alone until its
    /// retry time, except for the final flush on the way out.
    pub fn may_use_disk(&self, now: Instant, final_flush: bool) -> bool {
        self.retry_at.is_none_or(|t| now >= t) || final_flush
    }

    /// The reason the disk is not in use, for the error a skipped round returns.
    pub fn disk_error(&self) -> Option<&str> {
        self.disk_error.as_deref()
    }

    /// How long the I/O thread may sleep at `now` before its next round.
    pub fn io_wait(&self, now: Instant, tick: Duration) -> Duration {
        match self.rules.durability {
            // Sleep only until the next commit is due: after an early wake (an ack batch,
            // a replay read) a full `tick` would stretch the gap between commits towards
            // two intervals, and with it what a power cut can lose.
            Durability::Always => self
                .rules
                .commit_interval
                .saturating_sub(now.saturating_duration_since(self.last_commit))
                .clamp(Duration::from_millis(1), tick),
            Durability::Outage => tick,
        }
    }

    /// A store was opened: seed the memory from it. True if it had been failing.
    pub fn attached(&mut self, opened: Opened) -> bool {
        self.boot = opened.boot;
        self.maybe_delivered.extend(opened.maybe_delivered);
        for (topic, seq) in opened.latest {
            let newest = self.newest_seq_by_topic.entry(topic.into()).or_insert(seq);
            *newest = (*newest).max(seq);
        }
        // After a reopen (recovery of a damaged file) nothing in memory is known to be
        // in this store: write it all again (INSERT OR IGNORE makes that harmless).
        let history: Vec<Record> = self.history.drain(..).collect();
        for e in self.queued.iter_mut().chain(self.inflight.iter_mut()) {
            e.persisted = false;
        }
        for record in history.into_iter().rev() {
            self.queued.push_front(Entry {
                record,
                persisted: false,
            });
        }
        self.resident.clear();
        // Numbers handed out from memory while the store was away stay unique.
        self.next_seq = self.next_seq.max(opened.start);
        self.seq_reserved = opened.reserved;
        self.disk_depth = opened.depth;
        self.disk_unread = opened.depth > 0;
        self.disk_cursor = 0;
        self.store_dropped = opened.dropped;
        let was_failing = self.disk_error.take().is_some();
        self.store_ok = true;
        // Back from a failure with the link down: what piled up in memory goes to disk.
        self.spill_requested = self.memory_depth() > 0 && !self.link_up;
        self.retry_at = None;
        if opened.recovery.is_some() {
            self.recovery = opened.recovery;
        }
        was_failing
    }

    /// The first number `attach` may reserve from (a reopen must not go below what memory
    /// handed out already).
    pub fn boot_and_next_seq(&self) -> (u64, u64) {
        (self.boot, self.next_seq)
    }

    /// The store failed at `now` (at open, or in a round): memory serves, the error is
    /// logged once per episode, and the disk is retried after [`RETRY_AFTER`] (at once
    /// after damage: reopening recovers it).
    pub fn disk_failed(&mut self, now: Instant, message: String, reopen_now: bool) {
        self.persisting.clear();
        if self.disk_error.is_none() {
            tracing::error!("disk buffer unavailable: {message}");
        }
        self.disk_error = Some(message);
        self.store_ok = false;
        self.retry_at = (!reopen_now).then_some(now + RETRY_AFTER);
    }

    /// A round went through: the store works. True if it had been failing.
    pub fn disk_ok(&mut self) -> bool {
        self.retry_at = None;
        self.store_ok = true;
        self.disk_error.take().is_some()
    }

    /// The first step of a disk round at `now`: a spill (everything not on disk; queued
    /// copies then leave memory) or, in `always` mode, the periodic commit. `stored_bytes`
    /// is the store's figure against `max_size`.
    pub fn plan(&mut self, now: Instant, final_flush: bool, stored_bytes: u64) -> Plan {
        let spill = self.spill_requested || final_flush;
        let commit_due = self.rules.durability == Durability::Always
            && now.saturating_duration_since(self.last_commit) >= self.rules.commit_interval;
        let write = spill || commit_due;
        let mut plan = Plan {
            spill,
            write,
            force_deletes: spill,
            ..Plan::default()
        };
        self.spill_requested = false;
        if self.rules.durability == Durability::Always || spill {
            self.last_commit = now;
        }
        if !write {
            return plan;
        }
        for e in self.inflight.iter().chain(self.queued.iter()) {
            if !e.persisted {
                plan.batch.push(e.record.clone());
            }
        }
        plan.batch.sort_by_key(|r| r.seq);
        for r in &plan.batch {
            self.persisting.insert(r.seq);
        }
        plan.sent = self.sent_unsaved.clone();
        let dirty = std::mem::take(&mut self.newest_dirty);
        plan.newest = dirty
            .into_iter()
            .filter_map(|t| self.newest_seq_by_topic.get(&t).map(|&s| (t, s)))
            .collect();
        let incoming: u64 = plan
            .batch
            .iter()
            .map(|r| super::schema::row_bytes(&r.topic, &r.payload))
            .sum();
        plan.make_room =
            !self.to_delete.is_empty() && stored_bytes + incoming > self.rules.limits.max_size;
        plan
    }

    /// The memory side of a bound's [`Verdict`], given under the outbox lock so that
    /// nothing is handed out or acknowledged between the answer and what it does:
    /// acknowledged rows are freed (no drop), rows on the wire or maybe delivered stay,
    /// everything else leaves memory now and is dropped (counted by the store in the same
    /// transaction).
    pub fn verdicts(&mut self, seqs: &[u64]) -> Vec<Verdict> {
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
    pub fn bound_committed(&mut self) {
        self.taken_by_bound.clear();
        self.freeing.clear();
    }

    /// A bound's transaction failed: nothing was deleted, so what it took comes back.
    pub fn bound_failed(&mut self) {
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

    /// The planned write failed: what it took comes back and it is asked for again.
    pub fn write_failed(&mut self, plan: Plan) {
        self.bound_failed();
        self.spill_requested |= plan.spill;
        self.newest_dirty
            .extend(plan.newest.into_iter().map(|(t, _)| t));
    }

    /// The planned write committed: what it stored is on disk (`after`: the store's figures
    /// after it, updated under the same lock as memory so `depth` never sees a record that
    /// left memory for the disk as gone).
    pub fn written(&mut self, plan: &Plan, appended: &Appended, after: StoreAfter) {
        let StoreAfter {
            depth,
            dropped,
            stored_bytes,
        } = after;
        self.bound_committed();
        self.persisting.clear();
        self.disk_depth = depth;
        self.store_dropped = dropped;
        for seq in &plan.sent {
            self.sent_unsaved.remove(seq);
        }
        let stored: HashSet<u64> = appended.stored.iter().copied().collect();
        let dropped_now = appended.rejected.len() + appended.evicted.len();
        if dropped_now > 0 && !self.store_full {
            self.store_full = true;
            tracing::warn!(
                max_size = self.rules.limits.max_size,
                when_full = ?self.rules.limits.when_full,
                dropped = dropped_now,
                "buffer full: dropping readings ({}) until the link drains it; raise [buffer] \
                 max_size to hold a longer outage",
                match self.rules.limits.when_full {
                    WhenFull::DropOldest => "the oldest",
                    WhenFull::DropNewest => "the newest",
                }
            );
        } else if dropped_now == 0
            && self.store_full
            && stored_bytes <= full_episode_ends_below(self.rules.limits.max_size)
        {
            self.store_full = false;
            tracing::info!("buffer no longer full: readings are kept again");
        }
        for e in self.inflight.iter_mut().chain(self.queued.iter_mut()) {
            if stored.contains(&e.record.seq) {
                e.persisted = true;
                self.resident.insert(e.record.seq);
            }
        }
        if plan.spill {
            let mut evicted = Vec::new();
            self.queued.retain(|e| {
                if e.persisted {
                    evicted.push(e.record.seq);
                }
                !e.persisted
            });
            evicted.extend(self.history.drain(..).map(|r| r.seq));
            for seq in evicted {
                self.resident.remove(&seq);
            }
            self.disk_cursor = 0;
            self.disk_unread = true;
        }
    }

    /// Acknowledged on-disk records to delete at `now`, if a batch is due (or `force`).
    /// A record the planned write is still storing waits for the batch after it: acked
    /// between the plan and the make-room delete, its row deleted before the write lands
    /// would stay on disk for good, or be counted dropped when the bound asks about it.
    pub fn deletes_due(&mut self, now: Instant, force: bool) -> Vec<u64> {
        let due = force
            || (!self.deletes_wait_for_commits()
                && (self.to_delete.len() >= DELETE_BATCH
                    || now.saturating_duration_since(self.last_delete) >= DELETE_EVERY));
        if !due {
            return Vec::new();
        }
        self.last_delete = now;
        let (doomed, unwritten): (Vec<u64>, Vec<u64>) = std::mem::take(&mut self.to_delete)
            .into_iter()
            .partition(|seq| !self.persisting.contains(seq));
        self.to_delete.extend(unwritten);
        self.deleting.extend(doomed.iter().copied());
        doomed
    }

    /// In `always` mode a commit is at most `commit_interval` away and takes the deletes
    /// into its transaction ([`DELETE_BATCH`]).
    fn deletes_wait_for_commits(&self) -> bool {
        self.rules.durability == Durability::Always
    }

    /// The deletes of [`State::deletes_due`] are done (or failed: they wait for the next).
    pub fn deleted(&mut self, doomed: Vec<u64>, ok: bool) {
        self.deleting.clear();
        if !ok {
            self.to_delete.extend(doomed);
        }
    }

    /// Whether the age bound is checked at `boot_ms` (once a minute on the boot-time clock).
    pub fn expiry_due(&mut self, boot_ms: u64) -> bool {
        let due = self
            .last_expire
            .is_none_or(|t| boot_ms.saturating_sub(t) >= EXPIRE_EVERY_MS);
        if due {
            self.last_expire = Some(boot_ms);
        }
        due
    }

    /// An expiry run ended: `expired` is what it dropped (`None`: it failed).
    pub fn expired(&mut self, expired: Option<&[u64]>, depth: u64, dropped: u64) {
        match expired {
            Some(_) => self.bound_committed(),
            None => self.bound_failed(),
        }
        self.disk_depth = depth;
        self.store_dropped = dropped;
        let Some(expired) = expired else {
            return;
        };
        if !expired.is_empty() && !self.expiring {
            self.expiring = true;
            tracing::warn!(
                dropped = expired.len(),
                max_age = %humantime::format_duration(self.rules.limits.max_age),
                "dropping buffered readings older than max_age (the link has been down that \
                 long); raise [buffer] max_age to keep them longer"
            );
        } else if expired.is_empty() && self.expiring {
            self.expiring = false;
        }
    }

    /// Sequence numbers to reserve ahead (so a crash never leads to reuse), if due.
    pub fn reservation(&self) -> Option<u64> {
        (self.next_seq + SEQ_RESERVE_BLOCK / 2 >= self.seq_reserved)
            .then_some(self.next_seq + SEQ_RESERVE_BLOCK)
    }

    pub fn reserved(&mut self, upto: u64) {
        self.seq_reserved = upto;
    }

    /// The next replay read, while the link is up and history runs low.
    pub fn replay_read(&self, final_flush: bool) -> Option<Read> {
        let due =
            self.link_up && self.disk_unread && self.history.len() < PREFETCH_LOW && !final_flush;
        if !due {
            return None;
        }
        let prune = self.disk_cursor == 0 && self.rules.replay == Replay::Latest;
        Some(Read {
            after: self.disk_cursor,
            prune_except: prune.then(|| {
                self.resident
                    .union(&self.maybe_delivered)
                    .copied()
                    .collect()
            }),
        })
    }

    /// Records read back for replay: those not in memory and not being deleted join history.
    pub fn read_back(&mut self, rows: Vec<Record>) {
        if rows.len() < PREFETCH_BATCH {
            self.disk_unread = false;
        }
        for r in rows {
            self.disk_cursor = self.disk_cursor.max(r.seq);
            let skip = self.resident.contains(&r.seq)
                || self.deleting.contains(&r.seq)
                || self.to_delete.contains(&r.seq);
            if !skip {
                self.resident.insert(r.seq);
                self.history.push_back(r);
            }
        }
    }

    /// Records given up since the last round, for the store to count.
    pub fn given_up(&self) -> u64 {
        self.discarded
    }

    /// The store counted `given_up` (if `ok`): moved from memory to the store's count under
    /// one lock, so `dropped` never dips.
    pub fn given_up_noted(&mut self, given_up: u64, ok: bool, depth: u64, dropped: u64) {
        if ok {
            self.discarded -= given_up;
        }
        self.disk_depth = depth;
        self.store_dropped = dropped;
    }
}

/// A full episode ends only once the link has drained a tenth of the bound: when the link
/// drains about as fast as the devices produce, the store sits at its bound and a single
/// batch without a drop would otherwise end the episode, and the next one start it again,
/// every second or so (seen on a slow gateway: 25 warnings in 70 s).
fn full_episode_ends_below(max_size: u64) -> u64 {
    max_size - max_size / 10
}
