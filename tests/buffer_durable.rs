//! The durable outbox against a model of what must survive: random push / take / ack /
//! requeue (link death) / spill / I/O rounds / clean restarts / crashes, in both
//! durability modes, then a drain that must deliver exactly what the model says is alive.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use fieldlink::buffer::store::{Limits, ROW_OVERHEAD};
use fieldlink::buffer::{IoDriver, Outbox, Settings};
use fieldlink::config::{Durability, Replay, WhenFull};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn settings(dir: &Path, durability: Durability) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        durability,
        // Every I/O round is a commit in `always` mode: the model decides when rounds run.
        commit_interval: Duration::ZERO,
        limits: Limits {
            max_size: 1 << 40,
            max_age: Duration::from_secs(3600 * 24 * 365 * 100),
            when_full: WhenFull::DropOldest,
        },
        replay: Replay::All,
        replay_rate: None,
        spill_threshold: usize::MAX,
        capacity: usize::MAX,
        clock: std::sync::Arc::new(fieldlink::buffer::clock::SystemClock::new()),
    }
}

/// A record whose payload is its record number, so the model can check what comes back.
fn push(d: &Outbox, topic: u8) -> u64 {
    let seq = d.next_seq();
    d.push(format!("t/{topic}"), 0, seq.to_string().into_bytes())
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    Take(usize),
    Ack(prop::sample::Index),
    /// The link died.
    Requeue,
    Spill,
    /// One round of the I/O thread.
    Io,
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4).prop_map(Op::Push),
        4 => (1usize..8).prop_map(Op::Take),
        4 => any::<prop::sample::Index>().prop_map(Op::Ack),
        1 => Just(Op::Requeue),
        1 => Just(Op::Spill),
        3 => Just(Op::Io),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

/// What the outbox must still deliver, and what is certainly on disk.
#[derive(Debug, Default)]
struct Model {
    alive: BTreeSet<u64>,
    on_disk: BTreeSet<u64>,
    inflight: Vec<u64>,
    spill_pending: bool,
    /// Acknowledged records that may still be on disk (deletes are batched): a crash may
    /// bring them back (a duplicate, which at-least-once allows).
    acked_on_disk: BTreeSet<u64>,
    /// Records that may come back after a crash, and so may be handed out again.
    maybe: BTreeSet<u64>,
    last_seq: u64,
    newest: HashMap<u8, u64>,
    crashed: bool,
}

/// A failing case is saved in the repository's `proptest-regressions/` (committed) and replayed
/// first by every later run. Named directly: proptest's default looks for a `lib.rs` above the
/// test file and, under `tests/`, finds none and writes next to the test instead.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/buffer_durable.txt"
);

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn durable_outbox_loses_nothing_it_spilled_or_committed_and_never_hands_out_a_record_twice(
        always in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let durability = if always { Durability::Always } else { Durability::Outage };
        let tmp = tempfile::tempdir().unwrap();
        let open = || Outbox::open(settings(tmp.path(), durability), 1, IoDriver::Manual);
        let mut d = open();
        let mut m = Model::default();
        let mut topic_of: BTreeMap<u64, u8> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Push(topic) => {
                    let seq = push(&d, topic);
                    prop_assert!(seq > m.last_seq, "seq {seq} after {}", m.last_seq);
                    m.last_seq = seq;
                    m.alive.insert(seq);
                    m.newest.insert(topic, seq);
                    topic_of.insert(seq, topic);
                }
                Op::Take(n) => {
                    let got = d.take(n);
                    prop_assert!(got.len() <= n);
                    for r in got {
                        prop_assert!(m.alive.contains(&r.seq) || m.maybe.contains(&r.seq), "{} handed out but not alive", r.seq);
                        prop_assert!(!m.inflight.contains(&r.seq), "{} handed out twice", r.seq);
                        prop_assert_eq!(&r.payload, &r.seq.to_string().into_bytes());
                        if always && !m.maybe.contains(&r.seq) {
                            prop_assert!(m.on_disk.contains(&r.seq), "{} published before commit", r.seq);
                        }
                        if !m.crashed {
                            let topic = topic_of[&r.seq];
                            prop_assert_eq!(d.is_newest(&r), m.newest[&topic] == r.seq);
                        }
                        m.inflight.push(r.seq);
                    }
                }
                Op::Ack(i) => {
                    if m.inflight.is_empty() { continue; }
                    let seq = m.inflight.remove(i.index(m.inflight.len()));
                    prop_assert!(d.ack(seq));
                    prop_assert!(!d.ack(seq), "a second ack is ignored");
                    m.alive.remove(&seq);
                    if m.on_disk.remove(&seq) || m.maybe.contains(&seq) {
                        m.acked_on_disk.insert(seq);
                    }
                }
                Op::Requeue => {
                    prop_assert_eq!(d.requeue_inflight(), m.inflight.len());
                    m.inflight.clear();
                    m.spill_pending = true;
                }
                Op::Spill => {
                    d.spill();
                    m.spill_pending = true;
                }
                Op::Io => {
                    d.io_step().unwrap();
                    if m.spill_pending || always {
                        m.on_disk.extend(m.alive.iter().copied());
                    }
                    if m.spill_pending {
                        // A spill flushes the deletes.
                        for s in std::mem::take(&mut m.acked_on_disk) {
                            m.maybe.remove(&s);
                        }
                    }
                    m.spill_pending = false;
                    if m.maybe.is_empty() && m.acked_on_disk.is_empty() {
                        prop_assert_eq!(d.depth(), m.alive.len());
                    }
                }
                Op::Restart => {
                    d.shutdown().unwrap();
                    drop(d);
                    d = open();
                    m.on_disk.extend(m.alive.iter().copied());
                    m.inflight.clear();
                    m.spill_pending = false;
                    // Shutdown flushes the deletes; records back from a crash and not yet
                    // acknowledged stay on disk.
                    for s in std::mem::take(&mut m.acked_on_disk) {
                        m.maybe.remove(&s);
                    }
                }
                Op::Crash => {
                    drop(d);
                    d = open();
                    m.alive = m.alive.intersection(&m.on_disk).copied().collect();
                    m.on_disk = m.alive.clone();
                    m.maybe.extend(m.acked_on_disk.iter().copied());
                    m.acked_on_disk.clear();
                    m.inflight.clear();
                    m.spill_pending = false;
                    m.crashed = true;
                }
            }
            prop_assert_eq!(d.dropped(), 0);
        }

        // Link dies once more, comes back, and everything alive drains exactly once.
        d.requeue_inflight();
        let mut delivered = Vec::new();
        for _ in 0..10_000 {
            d.io_step().unwrap();
            let batch = d.take(16);
            if batch.is_empty() && d.depth() == 0 {
                break;
            }
            for r in batch {
                prop_assert!(d.ack(r.seq));
                delivered.push(r.seq);
            }
        }
        let unique: BTreeSet<u64> = delivered.iter().copied().collect();
        prop_assert_eq!(unique.len(), delivered.len(), "nothing handed out twice in the drain");
        prop_assert!(m.alive.is_subset(&unique), "lost: {:?}", m.alive.difference(&unique).collect::<Vec<_>>());
        let extra: BTreeSet<u64> = unique.difference(&m.alive).copied().collect();
        prop_assert!(extra.is_subset(&m.maybe), "handed out but never alive: {:?}", extra);
        d.shutdown().unwrap();
        let stats = fieldlink::buffer::stats(tmp.path()).unwrap();
        prop_assert_eq!(stats.depth, 0, "every acknowledged record is deleted");
    }
}

fn drain(d: &Outbox) -> Vec<fieldlink::buffer::Record> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        d.io_step().unwrap();
        let batch = d.take(8);
        if batch.is_empty() && d.depth() == 0 {
            break;
        }
        for r in &batch {
            d.ack(r.seq);
        }
        out.extend(batch);
    }
    out
}

#[test]
fn a_link_up_in_outage_mode_writes_no_record_to_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Outbox::open(
        settings(tmp.path(), Durability::Outage),
        1,
        IoDriver::Manual,
    );
    for i in 0..1000 {
        push(&d, (i % 4) as u8);
        d.io_step().unwrap();
        for r in d.take(8) {
            d.ack(r.seq);
        }
    }
    let stats = d.stats().unwrap().unwrap();
    assert_eq!(stats.depth, 0);
    // The first reservation block covers these 1000 readings: no write at all since open.
    assert_eq!(
        stats.next_seq,
        1 + fieldlink::buffer::outbox::SEQ_RESERVE_BLOCK
    );
}

#[test]
fn replay_alternates_history_and_live_batches_and_each_stays_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Outbox::open(
        settings(tmp.path(), Durability::Outage),
        1,
        IoDriver::Manual,
    );
    let history: Vec<u64> = (0..40).map(|i| push(&d, i % 3)).collect();
    d.requeue_inflight(); // link died: spill
    d.io_step().unwrap();
    let live: Vec<u64> = (0..40).map(|i| push(&d, i % 3)).collect();
    let _ = d.take(0); // link back
    d.io_step().unwrap();
    let mut sources = Vec::new();
    let mut order = Vec::new();
    for _ in 0..20 {
        let batch = d.take(8);
        if batch.is_empty() {
            break;
        }
        sources.push(if history.contains(&batch[0].seq) {
            'h'
        } else {
            'l'
        });
        for r in &batch {
            d.ack(r.seq);
            // History goes out without retain: only the newest record per topic may be
            // retained, and the live ones are newer.
            if history.contains(&r.seq) {
                assert!(!d.is_newest(r));
            }
        }
        order.extend(batch.iter().map(|r| r.seq));
        d.io_step().unwrap();
    }
    assert_eq!(sources.iter().collect::<String>(), "hlhlhlhlhl");
    let h: Vec<u64> = order
        .iter()
        .copied()
        .filter(|s| history.contains(s))
        .collect();
    let l: Vec<u64> = order.iter().copied().filter(|s| live.contains(s)).collect();
    assert_eq!(h, history);
    assert_eq!(l, live);
}

#[test]
fn replay_latest_sends_only_the_newest_stored_record_per_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path(), Durability::Outage);
    s.replay = Replay::Latest;
    let d = Outbox::open(s, 1, IoDriver::Manual);
    let seqs: Vec<u64> = (0..30).map(|i| push(&d, i % 3)).collect();
    d.requeue_inflight();
    d.io_step().unwrap();
    let _ = d.take(0);
    let got: Vec<u64> = drain(&d).iter().map(|r| r.seq).collect();
    assert_eq!(got, seqs[27..].to_vec());
}

#[test]
fn a_stored_record_superseded_before_a_restart_is_not_newest_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Outbox::open(
        settings(tmp.path(), Durability::Outage),
        1,
        IoDriver::Manual,
    );
    let old = push(&d, 1);
    d.requeue_inflight();
    d.io_step().unwrap(); // `old` spilled during an outage
    let _ = d.take(0);
    let newer = push(&d, 1);
    // The link is back; the live reading goes first and is acknowledged.
    let live = d.take(8);
    assert_eq!(live.iter().map(|r| r.seq).collect::<Vec<_>>(), [newer]);
    d.ack(newer);
    d.shutdown().unwrap();
    drop(d);
    let d = Outbox::open(
        settings(tmp.path(), Durability::Outage),
        1,
        IoDriver::Manual,
    );
    let _ = d.take(0);
    let replayed = drain(&d);
    assert_eq!(replayed.iter().map(|r| r.seq).collect::<Vec<_>>(), [old]);
    assert!(
        !d.is_newest(&replayed[0]),
        "replaying it retained would regress the topic"
    );
}

#[test]
fn the_replay_rate_cap_holds_history_but_not_live_readings() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path(), Durability::Outage);
    s.replay_rate = Some(5);
    let d = Outbox::open(s, 1, IoDriver::Manual);
    for i in 0..50 {
        push(&d, i % 3);
    }
    d.requeue_inflight();
    d.io_step().unwrap();
    let _ = d.take(0);
    d.io_step().unwrap();
    let first = d.take(100);
    assert_eq!(first.len(), 5, "one second's worth of history");
    assert!(d.take(100).is_empty(), "the rest waits for tokens");
    let live = push(&d, 0);
    assert_eq!(
        d.take(100).iter().map(|r| r.seq).collect::<Vec<_>>(),
        [live]
    );
}

#[test]
fn a_full_disk_buffer_drops_the_configured_side_and_counts_it() {
    for when_full in [WhenFull::DropOldest, WhenFull::DropNewest] {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path(), Durability::Outage);
        // 3-byte topic + 1-2 byte payload + the row overhead: room for exactly 28 of
        // either the first or the last records.
        s.limits.max_size = 28 * (3 + 2 + ROW_OVERHEAD);
        s.limits.when_full = when_full;
        let d = Outbox::open(s, 1, IoDriver::Manual);
        for _ in 0..50 {
            push(&d, 1);
        }
        d.requeue_inflight();
        d.io_step().unwrap();
        let _ = d.take(0);
        let got = drain(&d);
        let dropped = d.dropped();
        assert_eq!(got.len() as u64 + dropped, 50, "{when_full:?}");
        assert_eq!(dropped, 22, "{when_full:?}");
        let (first, last) = match when_full {
            WhenFull::DropOldest => (dropped + 1, 50),
            WhenFull::DropNewest => (1, 50 - dropped),
        };
        assert_eq!(
            (got[0].seq, got[got.len() - 1].seq),
            (first, last),
            "{when_full:?}"
        );
        let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{when_full:?}: one contiguous run"
        );
    }
}
