//! The SQLite store against a plain in-memory model, and its recovery from damaged files.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use fieldlink::buffer::clock::Queued;
use fieldlink::buffer::store::{protecting, Limits, Now, Store, FILE_NAME, ROW_OVERHEAD};
use fieldlink::buffer::Record;
use fieldlink::config::WhenFull;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn record(seq: u64, topic: &str, len: usize) -> Record {
    Record {
        seq,
        topic: topic.into(),
        payload: vec![(seq % 251) as u8; len].into(),
        ts_ms: 1_000 + seq,
        queued_at: Queued::UNKNOWN,
    }
}

fn big() -> Limits {
    Limits {
        max_size: 1 << 40,
        max_age: Duration::from_secs(3600 * 24 * 365 * 100),
        when_full: WhenFull::DropOldest,
    }
}

fn size(r: &Record) -> u64 {
    (r.topic.len() + r.payload.len()) as u64 + ROW_OVERHEAD
}

fn all(store: &Store) -> Vec<Record> {
    store.read_after(0, usize::MAX >> 1).unwrap()
}

/// What the store must hold: an ordered map, counters, and the byte bound.
#[derive(Debug, Clone, Default)]
struct Model {
    rows: BTreeMap<u64, Record>,
    next_seq: u64,
    dropped_full: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.rows.values().map(size).sum()
    }
    fn append(&mut self, batch: &[Record], limits: &Limits) {
        for r in batch {
            if limits.when_full == WhenFull::DropNewest && self.bytes() + size(r) > limits.max_size
            {
                self.dropped_full += 1;
                continue;
            }
            self.rows.insert(r.seq, r.clone());
            self.next_seq = self.next_seq.max(r.seq + 1);
        }
        while self.bytes() > limits.max_size {
            let (&seq, _) = self.rows.iter().next().unwrap();
            self.rows.remove(&seq);
            self.dropped_full += 1;
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        topics: Vec<u8>,
        len: usize,
    },
    Delete {
        picks: Vec<prop::sample::Index>,
    },
    ReadAfter {
        from: prop::sample::Index,
        n: usize,
    },
    /// Close cleanly and open again.
    Reopen,
    /// Copy the files while the store is open (a power cut after the last commit), then
    /// continue from the copy.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec(0u8..4, 1..20), 0usize..300)
            .prop_map(|(topics, len)| Op::Append { topics, len }),
        3 => prop::collection::vec(any::<prop::sample::Index>(), 0..10)
            .prop_map(|picks| Op::Delete { picks }),
        2 => (any::<prop::sample::Index>(), 1usize..50).prop_map(|(from, n)| Op::ReadAfter { from, n }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(big()),
        (
            2_000u64..20_000,
            prop_oneof![Just(WhenFull::DropOldest), Just(WhenFull::DropNewest)]
        )
            .prop_map(|(max_size, when_full)| Limits {
                max_size,
                when_full,
                ..big()
            }),
    ]
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal"] {
        let src = from.join(format!("{FILE_NAME}{suffix}"));
        if src.exists() {
            std::fs::copy(&src, to.join(format!("{FILE_NAME}{suffix}"))).unwrap();
        }
    }
}

/// A failing case is saved in the repository's `proptest-regressions/` (committed) and replayed
/// first by every later run. Named directly: proptest's default looks for a `lib.rs` above the
/// test file and, under `tests/`, finds none and writes next to the test instead.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/buffer_store.txt"
);

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_a_sorted_map_across_reopens_crashes_and_bounds(
        limits in limits_strategy(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = tmp.path().join("run0");
        let (mut store, recovery) = Store::open(&dir, limits).unwrap();
        prop_assert!(recovery.is_none());
        let mut model = Model { next_seq: 1, ..Model::default() };
        let mut next = store.next_seq();
        let mut runs = 0;
        for op in ops {
            match op {
                Op::Append { topics, len } => {
                    let batch: Vec<Record> = topics.iter().map(|t| {
                        let r = record(next, &format!("t/{t}"), len);
                        next += 1;
                        r
                    }).collect();
                    let out = store.append(&batch, &HashSet::new(), &mut protecting(&HashSet::new())).unwrap();
                    model.append(&batch, &limits);
                    prop_assert_eq!(out.rejected.len() + out.evicted.len() + out.stored.len() >= batch.len(), true);
                }
                Op::Delete { picks } => {
                    let keys: Vec<u64> = model.rows.keys().copied().collect();
                    if keys.is_empty() { continue; }
                    let mut doomed: Vec<u64> = picks.iter().map(|i| keys[i.index(keys.len())]).collect();
                    doomed.push(u64::MAX / 4); // unknown seqs are ignored
                    doomed.sort_unstable();
                    doomed.dedup();
                    let removed = store.delete(&doomed).unwrap();
                    let mut expected = 0;
                    for s in &doomed { if model.rows.remove(s).is_some() { expected += 1; } }
                    prop_assert_eq!(removed, expected);
                }
                Op::ReadAfter { from, n } => {
                    let keys: Vec<u64> = model.rows.keys().copied().collect();
                    let after = if keys.is_empty() { 0 } else { keys[from.index(keys.len())] };
                    let got = store.read_after(after, n).unwrap();
                    let want: Vec<Record> = model.rows.range(after + 1..).take(n).map(|(_, r)| r.clone()).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&dir, limits).unwrap().0;
                }
                Op::Crash => {
                    runs += 1;
                    let copy = tmp.path().join(format!("run{runs}"));
                    copy_db(&dir, &copy);
                    drop(store);
                    dir = copy;
                    let (s, recovery) = Store::open(&dir, limits).unwrap();
                    prop_assert!(recovery.is_none(), "a copied live WAL database is not damage");
                    store = s;
                }
            }
            prop_assert_eq!(store.depth(), model.rows.len() as u64);
            prop_assert_eq!(store.stored_bytes(), model.bytes());
            prop_assert_eq!(store.dropped_full(), model.dropped_full);
            prop_assert!(store.stored_bytes() <= limits.max_size);
            prop_assert!(store.next_seq() >= model.next_seq, "sequence numbers never go back");
        }
        let got = all(&store);
        let want: Vec<Record> = model.rows.values().cloned().collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn sequence_numbers_continue_after_a_restart_even_when_nothing_was_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(tmp.path(), big()).unwrap();
    assert_eq!(store.next_seq(), 1);
    store.reserve_seqs(5000).unwrap();
    store
        .append(
            &[record(7000, "a", 3)],
            &HashSet::new(),
            &mut protecting(&HashSet::new()),
        )
        .unwrap();
    store.delete(&[7000]).unwrap();
    drop(store);
    let (store, _) = Store::open(tmp.path(), big()).unwrap();
    assert_eq!(store.next_seq(), 7001);
    assert_eq!(store.depth(), 0);
}

#[test]
fn latest_per_topic_returns_the_newest_record_of_each_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(tmp.path(), big()).unwrap();
    let batch: Vec<Record> = (1..=9)
        .map(|s| record(s, ["a", "b", "c"][(s % 3) as usize], 4))
        .collect();
    store
        .append(&batch, &HashSet::new(), &mut protecting(&HashSet::new()))
        .unwrap();
    let latest: Vec<(u64, String)> = store
        .latest_per_topic()
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.topic.to_string()))
        .collect();
    assert_eq!(latest, [(7, "b".into()), (8, "c".into()), (9, "a".into())]);
    assert_eq!(store.prune_superseded(&HashSet::from([1])).unwrap(), 5);
    let left: Vec<u64> = all(&store).iter().map(|r| r.seq).collect();
    assert_eq!(left, [1, 7, 8, 9]);
}

#[test]
fn a_full_buffer_drops_the_oldest_but_never_a_protected_record() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_size: 10 * (ROW_OVERHEAD + 1 + 68),
        ..big()
    };
    let (mut store, _) = Store::open(tmp.path(), limits).unwrap();
    let batch: Vec<Record> = (1..=15).map(|s| record(s, "a", 68)).collect();
    let out = store
        .append(
            &batch,
            &HashSet::new(),
            &mut protecting(&HashSet::from([1, 2])),
        )
        .unwrap();
    assert_eq!(out.evicted, [3, 4, 5, 6, 7]);
    assert_eq!(store.dropped_full(), 5);
    let left: Vec<u64> = all(&store).iter().map(|r| r.seq).collect();
    assert_eq!(left, [1, 2, 8, 9, 10, 11, 12, 13, 14, 15]);
    drop(store);
    let (store, _) = Store::open(tmp.path(), limits).unwrap();
    assert_eq!(store.dropped_full(), 5, "the counter survives a restart");
}

#[test]
fn a_full_buffer_with_drop_newest_keeps_the_start_of_the_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_size: 10 * (ROW_OVERHEAD + 1 + 68),
        when_full: WhenFull::DropNewest,
        ..big()
    };
    let (mut store, _) = Store::open(tmp.path(), limits).unwrap();
    let batch: Vec<Record> = (1..=15).map(|s| record(s, "a", 68)).collect();
    let out = store
        .append(&batch, &HashSet::new(), &mut protecting(&HashSet::new()))
        .unwrap();
    assert_eq!(out.rejected, [11, 12, 13, 14, 15]);
    assert_eq!(store.dropped_full(), 5);
    assert_eq!(all(&store).last().unwrap().seq, 10);
}

#[test]
fn records_older_than_max_age_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_age: Duration::from_secs(60),
        ..big()
    };
    let (mut store, _) = Store::open(tmp.path(), limits).unwrap();
    let now = 10_000_000;
    let batch: Vec<Record> = (1..=6)
        .map(|s| Record {
            ts_ms: now - 130_000 + s * 20_000,
            ..record(s, "a", 8)
        })
        .collect();
    store
        .append(&batch, &HashSet::new(), &mut protecting(&HashSet::new()))
        .unwrap();
    let at = Now {
        wall_ms: now,
        boot_ms: 0,
    };
    let gone = store
        .expire(at, &mut protecting(&HashSet::from([2])))
        .unwrap();
    assert_eq!(gone, [1, 3]);
    assert_eq!(store.dropped_age(), 2);
    let stats = store.stats().unwrap();
    assert_eq!(stats.depth, 4);
    assert_eq!(stats.dropped(), 2);
}

#[test]
fn stats_reads_a_live_buffer_and_prints_depth_age_size_and_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(tmp.path(), big()).unwrap();
    let now = fieldlink::model::unix_ms_now();
    let batch: Vec<Record> = (1..=100)
        .map(|s| Record {
            ts_ms: now - 3_600_000,
            ..record(s, "plant/meter1/voltage", 60)
        })
        .collect();
    store
        .append(&batch, &HashSet::new(), &mut protecting(&HashSet::new()))
        .unwrap();
    let stats = fieldlink::buffer::stats(tmp.path()).unwrap();
    assert_eq!(stats.depth, 100);
    assert_eq!(stats.next_seq, 101);
    assert!(stats.bytes_on_disk > 0);
    let text = stats.to_string();
    println!("{text}");
    assert!(text.contains("depth:    100 readings"), "{text}");
    assert!(text.contains("oldest:   1h"), "{text}");
    assert!(text.contains("dropped:  0"), "{text}");
    drop(store);
    let missing = fieldlink::buffer::stats(&tmp.path().join("nowhere")).unwrap_err();
    assert!(missing.to_string().contains("[buffer] path"), "{missing}");
}

// ---------------------------------------------------------------------------------------
// Damage between runs.

fn filled(dir: &Path, n: u64) -> Vec<Record> {
    let (mut store, _) = Store::open(dir, big()).unwrap();
    let batch: Vec<Record> = (1..=n)
        .map(|s| record(s, &format!("t/{}", s % 7), 200))
        .collect();
    for chunk in batch.chunks(100) {
        store
            .append(chunk, &HashSet::new(), &mut protecting(&HashSet::new()))
            .unwrap();
    }
    store.reserve_seqs(n + 1000).unwrap();
    drop(store); // checkpoints the WAL into the file
    assert!(!dir.join(format!("{FILE_NAME}-wal")).exists());
    batch
}

fn corrupt_copies(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("buffer.db.corrupt-")
                && !p.to_string_lossy().ends_with("-wal")
        })
        .collect()
}

/// Opens a damaged store: it must come up, report, keep only true rows, and never reuse
/// a sequence number.
fn assert_recovers(dir: &Path, original: &[Record], what: &str) -> u64 {
    let (store, recovery) = Store::open(dir, big()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let recovery = recovery.unwrap_or_else(|| panic!("{what}: damage not detected"));
    assert!(recovery.moved_to.exists(), "{what}: {recovery}");
    assert_eq!(
        corrupt_copies(dir),
        std::slice::from_ref(&recovery.moved_to),
        "{what}"
    );
    let rows = all(&store);
    assert_eq!(rows.len() as u64, recovery.rows_recovered, "{what}");
    for r in &rows {
        assert_eq!(
            r,
            &original[(r.seq - 1) as usize],
            "{what}: a recovered row differs"
        );
    }
    assert!(
        store.next_seq() > original.len() as u64,
        "{what}: next_seq {} could reuse published numbers",
        store.next_seq()
    );
    drop(store);
    let (_, again) = Store::open(dir, big()).unwrap();
    assert!(again.is_none(), "{what}: the recovered file is clean");
    rows.len() as u64
}

#[test]
fn a_truncated_database_is_moved_aside_and_what_is_readable_recovered() {
    for fraction in [0.0, 0.01, 0.3, 0.5, 0.9, 0.999] {
        let tmp = tempfile::tempdir().unwrap();
        let original = filled(tmp.path(), 2000);
        let db = tmp.path().join(FILE_NAME);
        let len = std::fs::metadata(&db).unwrap().len();
        let cut = (len as f64 * fraction) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let got = assert_recovers(
            tmp.path(),
            &original,
            &format!("truncated to {cut} of {len}"),
        );
        println!("truncated to {cut:>7} of {len}: recovered {got} of 2000");
    }
}

#[test]
fn pages_overwritten_with_garbage_are_skipped_and_the_rest_recovered() {
    for (page, pages) in [(0u64, 1u64), (1, 1), (3, 2), (20, 5), (60, 1)] {
        let tmp = tempfile::tempdir().unwrap();
        let original = filled(tmp.path(), 2000);
        let db = tmp.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&db).unwrap();
        let start = (page * 4096) as usize;
        let end = (start + (pages * 4096) as usize).min(bytes.len());
        let mut x = 0x9e37_79b9u32;
        for b in &mut bytes[start..end] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        std::fs::write(&db, bytes).unwrap();
        let got = assert_recovers(
            tmp.path(),
            &original,
            &format!("pages {page}..{} garbled", page + pages),
        );
        println!(
            "pages {page:>2}..{:>2} garbled: recovered {got} of 2000",
            page + pages
        );
        if page > 1 {
            assert!(
                got >= 1500,
                "one damaged stretch must not cost the rest of the file"
            );
        }
    }
}

#[test]
fn a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_one_started() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join(FILE_NAME),
        b"this is not sqlite at all, just text\n".repeat(200),
    )
    .unwrap();
    let (store, recovery) = Store::open(tmp.path(), big()).unwrap();
    let recovery = recovery.unwrap();
    assert_eq!(recovery.rows_recovered, 0);
    assert!(recovery.to_string().contains("moved to"), "{recovery}");
    assert!(
        store.next_seq() > 1_000_000,
        "numbering restarts above anything published"
    );
}
