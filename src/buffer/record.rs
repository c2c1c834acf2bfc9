//! What the outbox carries: a record and the number a reading publishes.
//!
//! The ground floor of the outbox wing: the queue, the store, the row format and the uplink
//! all speak in these types, and this file imports nothing from them.

use std::sync::Arc;

use bytes::Bytes;

use super::clock::Queued;

/// Topic and payload are shared, not owned: a record is held by the outbox (in flight, so it
/// can be put back) and by the uplink (until acknowledged) at once, and its payload goes to
/// rumqttc as is; a clone is two reference counts, not two allocations and copies per
/// reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record number: assigned at push, strictly increasing per gateway, keys the
    /// store; never published.
    pub seq: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub ts_ms: u64,
    /// When it was queued on the boot-time clock: what the buffer's age bound measures.
    pub queued_at: Queued,
}

/// What a reading's payload publishes as its identity: `(boot, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadingNumber {
    /// The agent's start count (persisted in the buffer's meta table).
    pub boot: u64,
    /// 1, 2, 3… per boot, readings only.
    pub seq: u64,
}
