//! The outbox's disk side: the one thread that does all disk I/O, executing the plans of
//! [`super::state`] against the SQLite [`Store`]. Decides nothing itself: when to write,
//! what, what to delete, when to expire, reserve, read back or retry is the state's answer;
//! this file only opens the store, runs the statements and reports what they did.
//!
//! The state lock is never held across a disk write, except where the store asks for a
//! bound's verdicts inside its transaction (see `state`, "Drops are exact").

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::clock::{describe_step, Clock, StepWatch};
use super::error::{BufferError, Result};
use super::state::{Opened, State, StoreAfter, SEQ_RESERVE_BLOCK};
use super::stats::Stats;
use super::store::{Now, Store, Write};
use crate::config::Durability;

/// Housekeeping period in `outage` mode.
const TICK: Duration = Duration::from_secs(1);

/// What the API and the I/O thread share.
#[derive(Debug)]
pub(super) struct Shared {
    pub dir: PathBuf,
    pub clock: std::sync::Arc<dyn Clock>,
    pub state: Mutex<State>,
    pub disk: Mutex<Disk>,
    /// Wakes `wait_queued`: something may be takeable.
    pub notify: Notify,
    pub wake: (Mutex<WakeFlags>, Condvar),
}

/// The store, while it is open, and the wall-clock step watch of its rounds.
#[derive(Debug)]
pub(super) struct Disk {
    pub store: Option<Store>,
    pub step_watch: StepWatch,
}

impl Disk {
    /// Closed; a store is attached by `attach`.
    pub fn new() -> Disk {
        Disk {
            store: None,
            step_watch: StepWatch::new(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct WakeFlags {
    pub woken: bool,
    pub stop: bool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the buffer down with it: the data is still valid.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn wake_io(&self) {
        let (flags, cv) = &self.wake;
        lock(flags).woken = true;
        cv.notify_one();
    }

    pub fn stop_io(&self) {
        let (flags, cv) = &self.wake;
        lock(flags).stop = true;
        cv.notify_one();
    }
}

pub(super) fn io_loop(shared: &Shared) {
    let rules = lock(&shared.state).rules().clone();
    let tick = match rules.durability {
        Durability::Always => rules.commit_interval.min(TICK),
        Durability::Outage => TICK,
    };
    loop {
        let wait = lock(&shared.state).io_wait(Instant::now(), tick);
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
/// memory-only mode with the reason, to be retried when the state says.
pub(super) fn attach(dir: &Path, clock: &dyn Clock, disk: &mut Disk, st: &mut State, now: Instant) {
    let (boot, next_seq) = st.boot_and_next_seq();
    let opened = Store::open(dir, st.rules().limits).and_then(|(mut store, recovery)| {
        let latest = store.newest_per_topic()?;
        let start = store.next_seq().max(next_seq);
        store.reserve_seqs(start + SEQ_RESERVE_BLOCK)?;
        store.enter_os_boot(&clock.os_boot_id(), clock.boot_ms())?;
        let boot = if boot == 0 {
            store.next_boot(0)?
        } else {
            // Reopened after damage, or the epoch was made up while the store was away.
            store.raise_boot(boot)?;
            boot
        };
        let opened = Opened {
            latest,
            start,
            boot,
            maybe_delivered: store.maybe_delivered()?,
            reserved: store.next_seq(),
            depth: store.depth(),
            dropped: store.dropped_total(),
            recovery,
        };
        Ok((store, opened))
    });
    match opened {
        Ok((store, opened)) => {
            if st.attached(opened) {
                tracing::info!(path = %store.path().display(), "buffer store usable again");
            }
            disk.store = Some(store);
        }
        Err(e) => {
            st.disk_failed(now, e.to_string(), false);
            disk.store = None;
        }
    }
}

/// One round of disk work: reservation, commit or spill, deletes, expiry, replay read.
pub(super) fn io_step(shared: &Shared, final_flush: bool) -> Result<()> {
    let mut disk = lock(&shared.disk);
    if let Some(step) = disk.step_watch.look(shared.clock.as_ref()) {
        tracing::warn!(
            "the wall clock stepped {} (NTP sync or a manual change): buffered readings keep \
             their age by the boot-time clock, so max_age is unaffected; readings keep the \
             ts they were stamped with",
            describe_step(step)
        );
    }
    let now = Instant::now();
    let unusable = |st: &State| BufferError::Io {
        path: shared.dir.clone(),
        detail: st.disk_error().unwrap_or_default().to_string(),
    };
    {
        let mut st = lock(&shared.state);
        if !st.rules().disk {
            return Ok(());
        }
        // A failing disk is left alone until the retry time: memory serves meanwhile.
        if !st.may_use_disk(now, final_flush) {
            return Err(unusable(&st));
        }
        if disk.store.is_none() {
            attach(&shared.dir, shared.clock.as_ref(), &mut disk, &mut st, now);
            if !st.may_use_disk(now, final_flush) {
                return Err(unusable(&st));
            }
        }
    }
    let Some(store) = disk.store.as_mut() else {
        return Err(unusable(&lock(&shared.state)));
    };
    match round(shared, store, now, final_flush) {
        Ok(()) => {
            if lock(&shared.state).disk_ok() {
                tracing::info!(path = %store.path().display(), "buffer store writable again");
            }
            Ok(())
        }
        Err(e) => {
            // Reopening runs recovery; what is in memory is written after it.
            let reopen = e.is_corrupt();
            lock(&shared.state).disk_failed(now, e.to_string(), reopen);
            if reopen {
                disk.store = None;
            }
            shared.notify.notify_one();
            Err(e)
        }
    }
}

/// Deletes what the state says is due for deleting.
fn delete(shared: &Shared, store: &mut Store, now: Instant, force: bool) -> Result<()> {
    let doomed = lock(&shared.state).deletes_due(now, force);
    let deleted = store.delete(&doomed);
    lock(&shared.state).deleted(doomed, deleted.is_ok());
    deleted.map(|_| ())
}

fn round(shared: &Shared, store: &mut Store, now: Instant, final_flush: bool) -> Result<()> {
    // A write takes every acknowledged record's delete into its own transaction (deleted
    // first, which also makes room for it under `max_size`, see `Plan::make_room`): one
    // commit per `commit_interval` in `always` mode instead of one per batch of acks.
    let (plan, acked) = {
        let mut st = lock(&shared.state);
        let plan = st.plan(now, final_flush, store.stored_bytes());
        let acked = if plan.write {
            st.deletes_due(now, true)
        } else {
            Vec::new()
        };
        (plan, acked)
    };

    // 1. The write. The bound asks the memory state about every record it wants gone,
    // under the state lock, inside the store's transaction.
    let mut decide = |seqs: &[u64]| lock(&shared.state).verdicts(seqs);
    let write = Write {
        records: &plan.batch,
        sent: &plan.sent,
        newest: &plan.newest,
        acked: &acked,
    };
    match store.write(write, &mut decide) {
        Ok(appended) => {
            let mut st = lock(&shared.state);
            st.written(
                &plan,
                &appended,
                StoreAfter {
                    depth: store.depth(),
                    dropped: store.dropped_total(),
                    stored_bytes: store.stored_bytes(),
                },
            );
            st.deleted(acked, true);
        }
        Err(e) => {
            let mut st = lock(&shared.state);
            st.write_failed(plan);
            st.deleted(acked, false);
            return Err(e);
        }
    }
    // Only records the write made takeable (in `always` mode, records go out once on disk)
    // are news for the uplink; a notify each round would wake the runtime every second
    // from this thread for nothing.
    if !plan.batch.is_empty() {
        shared.notify.notify_one();
    }

    // 2. Deletes of acknowledged records between writes (a replay draining the backlog).
    delete(shared, store, now, false)?;

    // 3. Age bound, on the boot-time clock (see `super::age`).
    let at = Now {
        wall_ms: shared.clock.wall_ms(),
        boot_ms: shared.clock.boot_ms(),
    };
    if store.depth() > 0 && lock(&shared.state).expiry_due(at.boot_ms) {
        let mut decide = |seqs: &[u64]| lock(&shared.state).verdicts(seqs);
        let expired = store.expire(at, &mut decide);
        lock(&shared.state).expired(
            expired.as_deref().ok(),
            store.depth(),
            store.dropped_total(),
        );
        expired?;
    }

    // 4. Sequence numbers reserved ahead, so a crash never leads to reuse.
    let reservation = lock(&shared.state).reservation();
    if let Some(upto) = reservation {
        store.reserve_seqs(upto)?;
        lock(&shared.state).reserved(upto);
    }

    // 5. Replay: read the next stored records while the link is up.
    let read = lock(&shared.state).replay_read(final_flush);
    if let Some(read) = read {
        if let Some(protect) = &read.prune_except {
            store.prune_superseded(protect)?;
        }
        let rows = store.read_after(read.after, super::state::PREFETCH_BATCH)?;
        lock(&shared.state).read_back(rows);
        shared.notify.notify_one();
    }

    // 6. Records given up since the last round are counted on disk.
    let given_up = lock(&shared.state).given_up();
    let noted = store.note_given_up(given_up);
    lock(&shared.state).given_up_noted(
        given_up,
        noted.is_ok(),
        store.depth(),
        store.dropped_total(),
    );
    noted
}

/// The store's figures for `Outbox::stats` (`None` while it is unavailable).
pub(super) fn stats(shared: &Shared) -> Option<Result<Stats>> {
    lock(&shared.disk).store.as_ref().map(|s| s.stats())
}

/// Ends the disk side: the final flush, then the store is closed.
pub(super) fn close(shared: &Shared) -> Result<()> {
    lock(&shared.state).request_spill();
    let outcome = io_step(shared, true);
    lock(&shared.disk).store = None;
    outcome
}
