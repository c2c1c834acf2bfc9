//! The durable store-and-forward buffer: the only module that touches the disk.
//!
//! Owns `buffer.db` in the state directory ([`store`]: schema, bounds, durability, recovery)
//! and the durable outbox ([`durable`]: memory queue + spills + replay) that the uplink's
//! `queue::Outbox` delegates to when a buffer is configured. Must not touch the network,
//! the retain flag or MQTT packet ids: it answers `is_newest` and the uplink decides.
//!
//! Guarantees (the details and their proofs-by-test live in the submodules):
//! - A record leaves the buffer only through `ack` (its PUBACK arrived), or by a counted
//!   drop: memory overflow while the disk is unusable, `max_size` (oldest or newest side,
//!   per `when_full`), or `max_age`.
//! - Sequence numbers strictly increase across restarts, crashes and recoveries.
//! - After a process crash, everything spilled or committed is replayed; after a power cut,
//!   everything whose append returned is (see `store`, "Durability").
//! - Disk full, read-only directory, damaged file: typed [`BufferError`], never a panic;
//!   the outbox keeps working from memory and retries the disk.

pub mod durable;
pub mod error;
mod recover;
pub mod store;

pub use durable::{Durable, IoDriver, Settings, Status};
pub use error::BufferError;
pub use store::{stats, Limits, Recovery, Stats, Store};
