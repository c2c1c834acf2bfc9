//! What the outbox's decisions depend on besides its memory: the `[buffer]` settings that
//! shape them, and whether there is a disk at all.

use std::time::Duration;

use super::store::Limits;
use crate::config::{Durability, Replay};

/// What the decisions depend on besides the memory: the `[buffer]` settings that shape
/// them, and whether there is a disk at all.
#[derive(Debug, Clone)]
pub struct Rules {
    pub durability: Durability,
    pub commit_interval: Duration,
    pub replay: Replay,
    pub replay_rate: Option<u32>,
    pub spill_threshold: usize,
    /// Bound on records held in memory (queued + history + in flight).
    pub capacity: usize,
    /// The store's bounds: a write that would pass `max_size` first deletes what was acked.
    pub limits: Limits,
    /// False for a memory-only outbox: nothing is ever planned for a disk.
    pub disk: bool,
}

impl Rules {
    /// A memory-only outbox of `capacity` records.
    pub fn memory(capacity: usize) -> Rules {
        Rules {
            durability: Durability::Outage,
            commit_interval: Duration::from_secs(1),
            replay: Replay::All,
            replay_rate: None,
            spill_threshold: usize::MAX,
            capacity: capacity.max(1),
            limits: Limits {
                max_size: u64::MAX,
                ..Limits::default()
            },
            disk: false,
        }
    }
}
