//! The outbox: records waiting for the broker's acknowledgement, in memory and (when
//! opened on a state directory) in a SQLite store behind it. The uplink only ever sees
//! `push` / `take` / `ack` / `requeue_inflight` / `is_newest`; none of those calls blocks
//! on the disk.
//!
//! This file is the API: it reads the clocks, takes the lock, asks [`super::state`] (where
//! every decision is made, with `now` passed in) and wakes the I/O thread of
//! `io`. [`Outbox::new`] is the same outbox without a disk: nothing is ever
//! planned for one, so it never spills and its memory bound drops the oldest.
//!
//! # Contract
//! - `seq` (the record number) is assigned at `push`, strictly increasing per gateway (also
//!   across restarts, crashes and recoveries: reserved ahead in blocks on disk); it orders
//!   records and keys the store, and is never published.
//! - Readings also get a published [`ReadingNumber`]: the boot epoch (counted per start in
//!   the store's meta; made up from the clock, unix seconds, when the store cannot be opened
//!   at start, and written to it once it can) and a count that starts at 1 at every start
//!   and takes no gaps for status or meta records, so within one boot every gap a consumer
//!   sees is a real loss. Assigned under the same lock as `seq`, so the two orders agree.
//! - A record leaves only through `ack` (its PUBACK arrived), or by a counted drop: memory
//!   overflow while there is no usable disk, `discard` (the broker will never take it, see
//!   `uplink::quarantine`), or the store's bounds. A record that was on the wire when the
//!   link died is never dropped: the broker may have it (PUBACK lost); it goes again first.
//! - `take` hands records out oldest first; `requeue_inflight` puts every record that was
//!   handed out but not acknowledged back at the head, in its original order.
//!
//! # When it writes
//! - `outage` mode: on [`Outbox::spill`], on `requeue_inflight` (the link died), when the
//!   memory backlog passes `spill_threshold`, and on [`Outbox::shutdown`]. A spill writes
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
//! read oldest first and `take` alternates batches: one from history, one from live
//! readings, so neither starves. History is held to `replay_rate` readings/s (token
//! bucket); live readings are never held back. `replay = "latest"` prunes every stored
//! record that a newer one of its topic supersedes before a replay starts.
//!
//! # Retained values
//! A record may be published retained only if [`Outbox::is_newest`], i.e. no newer record
//! of its topic is known: pushed in this run, stored on disk, or noted in the store's
//! `newest` table (written with every spill and commit, and on shutdown). So replayed
//! history goes out without retain unless it is the newest reading of its point, and the
//! retained value of every topic ends at its newest reading whatever the interleaving. One
//! gap, after a crash only: in `outage` mode the `newest` table is as of the last spill, so
//! a stored record superseded by a reading published after that spill looks newest and is
//! replayed retained; the next live reading of that point (one poll interval) puts the
//! retained value right again.
//!
//! # Failing disk
//! Any store error (disk full, read-only directory, damage) leaves the records in memory,
//! logs once per episode, and is reported by [`Outbox::status`]; records keep flowing to
//! the link (`always` mode stops waiting for commits), memory is bounded by `capacity`
//! (oldest dropped and counted), and the store is retried every [`RETRY_AFTER`].

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::clock::{Clock, OsBoot, Queued, SystemClock};
use super::error::Result;
use super::io::{self, lock, Disk, Shared, WakeFlags};
use super::plan::Ready;
use super::record::{ReadingNumber, Record};
pub use super::rules::Rules;
use super::state::State;
pub use super::state::{RETRY_AFTER, SEQ_RESERVE_BLOCK};
use super::stats::Stats;
pub use super::status::Status;
use super::store::Limits;
use crate::config::{Buffer, Durability, Replay};

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

    fn rules(&self) -> Rules {
        Rules {
            durability: self.durability,
            commit_interval: self.commit_interval,
            replay: self.replay,
            replay_rate: self.replay_rate,
            spill_threshold: self.spill_threshold,
            capacity: self.capacity.max(1),
            limits: self.limits,
            disk: true,
        }
    }
}

/// Whether [`Outbox::open`] runs its own I/O thread, or the caller drives
/// [`Outbox::io_step`] (tests and benches, for deterministic interleavings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    Thread,
    Manual,
}

/// The outbox. Cheap to share (`Arc`); the I/O thread stops on `shutdown` or drop.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
    io_thread: Mutex<Option<JoinHandle<()>>>,
}

/// The monotonic clock of the API's decisions: tokio's, so a test on a paused runtime
/// drives the replay rate (outside a paused runtime it is the system's). The I/O thread's
/// timers (commit, delete batches, retry) run on the system clock: a paused test drives
/// those through `buffer::state` directly.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Outbox {
    /// An outbox without a disk: `capacity` bounds queued plus in-flight records; `boot` is
    /// the epoch readings carry (there is no store to count starts in: the caller says).
    pub fn new(capacity: usize, boot: u64) -> Outbox {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let state = State::new(Rules::memory(capacity), 1, boot, now());
        Outbox::assemble(PathBuf::new(), clock, state, None)
    }

    /// Opens the store in `settings.dir` (recovering a damaged file) and starts the I/O
    /// thread. Never fails: if the store cannot be opened the outbox runs from memory, says
    /// why in the log and in [`Outbox::status`], and retries the store later.
    /// `fallback_first_seq` numbers records only when no store could be read.
    pub fn open(settings: Settings, fallback_first_seq: u64, driver: IoDriver) -> Outbox {
        let started = now();
        let mut state = State::new(settings.rules(), fallback_first_seq, 0, started);
        let mut disk = Disk::new();
        disk.step_watch.look(settings.clock.as_ref());
        io::attach(
            &settings.dir,
            settings.clock.as_ref(),
            &mut disk,
            &mut state,
            started,
        );
        if state.boot_and_next_seq().0 == 0 {
            state.without_store_at_start(settings.clock.wall_ms());
        }
        Outbox::assemble(settings.dir, settings.clock, state, Some((disk, driver)))
    }

    fn assemble(
        dir: PathBuf,
        clock: Arc<dyn Clock>,
        state: State,
        disk: Option<(Disk, IoDriver)>,
    ) -> Outbox {
        let (disk, driver) = disk.unwrap_or((Disk::new(), IoDriver::Manual));
        let shared = Arc::new(Shared {
            dir,
            clock,
            state: Mutex::new(state),
            disk: Mutex::new(disk),
            notify: Notify::new(),
            wake: (Mutex::new(WakeFlags::default()), Condvar::new()),
        });
        let io_thread = match driver {
            IoDriver::Manual => None,
            IoDriver::Thread => {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("fieldlink-buffer".into())
                    .spawn(move || io::io_loop(&shared))
                    .map_err(|e| {
                        tracing::error!(
                            "cannot start the buffer I/O thread ({e}): running from memory"
                        )
                    })
                    .ok()
            }
        };
        Outbox {
            shared,
            io_thread: Mutex::new(io_thread),
        }
    }

    /// Queues a record that carries no reading number (status, meta). Never blocks and
    /// never touches the disk: when memory is full, the oldest queued record not on disk
    /// is dropped and counted.
    pub fn push(&self, topic: impl Into<Arc<str>>, ts_ms: u64, payload: Vec<u8>) -> u64 {
        self.push_numbered(topic.into(), ts_ms, false, |_| payload)
    }

    /// Queues a reading; `payload` is built with its [`ReadingNumber`] (this start's boot
    /// epoch, and 1, 2, 3… over the readings of this start). Returns the record's `seq`.
    pub fn push_reading(
        &self,
        topic: impl Into<Arc<str>>,
        ts_ms: u64,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> u64 {
        self.push_numbered(topic.into(), ts_ms, true, payload)
    }

    fn push_numbered(
        &self,
        topic: Arc<str>,
        ts_ms: u64,
        reading: bool,
        payload: impl FnOnce(ReadingNumber) -> Vec<u8>,
    ) -> u64 {
        let queued_at = Queued {
            os_boot: OsBoot::This,
            boot_ms: self.shared.clock.boot_ms(),
        };
        let (seq, wake) = lock(&self.shared.state).push(topic, ts_ms, reading, queued_at, payload);
        self.shared.notify.notify_one();
        if wake {
            self.shared.wake_io();
        }
        seq
    }

    /// Hands out up to `max` records and marks them in flight: alternately a batch of
    /// replayed history (oldest first, within the rate cap) and a batch of live records.
    pub fn take(&self, max: usize) -> Vec<Record> {
        let (batch, refill) = lock(&self.shared.state).take(now(), max);
        if refill {
            self.shared.wake_io();
        }
        batch
    }

    /// Resolves once `take` would hand out something. Like `take`, it tells the buffer the
    /// link is up (the uplink waits only when it can send), which starts replay reads.
    pub async fn wait_queued(&self) {
        loop {
            let notified = self.shared.notify.notified();
            let (ready, wake) = lock(&self.shared.state).ready(now());
            if wake {
                self.shared.wake_io();
            }
            match ready {
                Ready::Now => return,
                Ready::After(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = notified => {}
                    }
                }
                Ready::OnNotify => notified.await,
            }
        }
    }

    /// The broker acknowledged `seq`: forget it (and delete it from disk in the next batch).
    /// Unknown sequence numbers are ignored (a duplicate ack after a resend).
    pub fn ack(&self, seq: u64) -> bool {
        let acked = lock(&self.shared.state).ack(seq);
        if acked == Some(true) {
            self.shared.wake_io();
        }
        acked.is_some()
    }

    /// Gives up on the in-flight record `seq` (the broker will never take it): it leaves as
    /// an acknowledged one does (deleted from disk in the next batch) and is counted as
    /// dropped. False if `seq` is not in flight.
    pub fn discard(&self, seq: u64) -> bool {
        if !lock(&self.shared.state).discard(seq) {
            return false;
        }
        self.shared.wake_io();
        true
    }

    /// The link died: every unacknowledged record goes back to the head of the queue, in
    /// seq order, and (with a store) everything held in memory is spilled to disk.
    pub fn requeue_inflight(&self) -> usize {
        let (n, spill) = lock(&self.shared.state).requeue_inflight();
        if n > 0 {
            self.shared.notify.notify_one();
        }
        if spill {
            self.shared.wake_io();
        }
        n
    }

    /// Asks the I/O thread to write everything held in memory to disk now.
    pub fn spill(&self) {
        lock(&self.shared.state).request_spill();
        self.shared.wake_io();
    }

    /// True when no newer record for the same topic is known: only such a record may be
    /// published retained, so a replayed older reading never overwrites a newer one.
    pub fn is_newest(&self, record: &Record) -> bool {
        lock(&self.shared.state).is_newest(record)
    }

    /// The record number the next `push` gets (internal: ordering and the store's key).
    pub fn next_seq(&self) -> u64 {
        lock(&self.shared.state).next_seq()
    }

    /// The number of the last reading pushed in this start (`seq` 0: none yet).
    pub fn last_reading(&self) -> ReadingNumber {
        lock(&self.shared.state).last_reading()
    }

    /// Records not yet acknowledged, in memory and on disk.
    pub fn depth(&self) -> usize {
        lock(&self.shared.state).depth()
    }

    pub fn inflight(&self) -> usize {
        lock(&self.shared.state).inflight()
    }

    /// Records lost unpublished: memory overflow, the store's full and age drops, and the
    /// records the uplink gave up on.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.state).dropped()
    }

    /// The buffer's part of the health topic; `None` for an outbox without a disk.
    pub fn status(&self) -> Option<Status> {
        let st = lock(&self.shared.state);
        st.rules().disk.then(|| st.status())
    }

    /// The store's figures (`None` while it is unavailable, or without a disk).
    pub fn stats(&self) -> Option<Result<Stats>> {
        io::stats(&self.shared)
    }

    /// Stops the I/O thread, writes every record still in memory (queued and in flight),
    /// and closes the store. Call once on the way out; dropping without it is a crash.
    /// Without a disk there is nothing to save.
    pub fn shutdown(&self) -> Result<()> {
        self.stop_thread();
        io::close(&self.shared)
    }

    /// One round of disk work: reservation, commit or spill, deletes, expiry, replay read.
    /// The I/O thread calls it; with [`IoDriver::Manual`] the caller does.
    pub fn io_step(&self) -> Result<()> {
        io::io_step(&self.shared, false)
    }

    fn stop_thread(&self) {
        let handle = lock(&self.io_thread).take();
        if let Some(handle) = handle {
            self.shared.stop_io();
            let _ = handle.join();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
// The outbox without a disk (the contract is the same with one: tests/buffer_*.rs).
#[cfg(test)]
mod tests {
    use super::*;

    fn push(o: &Outbox, topic: &str) -> u64 {
        o.push_reading(topic, 0, |n| n.seq.to_string().into_bytes())
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
        o.push("a/status", 0, b"online".to_vec());
        push(&o, "a");
        let payloads: Vec<Vec<u8>> = o.take(10).into_iter().map(|r| r.payload.to_vec()).collect();
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
