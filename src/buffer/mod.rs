//! The durable store-and-forward buffer: the only module that touches the disk.
//!
//! Owns the state directory: `buffer.db` ([`store`]: schema, bounds, durability, recovery),
//! the durable outbox ([`durable`]: memory queue + spills + replay) that the uplink's
//! `queue::Outbox` delegates to when a buffer is configured, the one-agent-per-directory
//! lock ([`lock`]) and the clocks ages are measured by ([`clock`]). Must not touch the network,
//! the retain flag or MQTT packet ids: it answers `is_newest` and the uplink decides.
//!
//! Guarantees (the details and their proofs-by-test live in the submodules):
//! - A record leaves the buffer only through `ack` (its PUBACK arrived), or by a counted
//!   drop: memory overflow while the disk is unusable, `max_size` (oldest or newest side,
//!   per `when_full`), or `max_age`. The count is exact: a record the broker acknowledged is
//!   never counted, and a record that was on the wire when the link died (maybe delivered)
//!   is never dropped.
//! - Record numbers strictly increase across restarts, crashes and recoveries; readings
//!   also get a published `(boot, seq)`, dense within one start.
//! - `max_age` is measured on the boot-time clock: a wall-clock step never ages a reading.
//! - After a process crash, everything spilled or committed is replayed; after a power cut,
//!   everything whose append returned is (see `store`, "Durability").
//! - Disk full, read-only directory, damaged file: typed [`BufferError`], never a panic;
//!   the outbox keeps working from memory and retries the disk.

pub mod clock;
pub mod durable;
pub mod error;
pub mod lock;
mod recover;
pub mod store;

pub use durable::{Durable, IoDriver, Settings, Status};
pub use error::BufferError;
pub use store::{stats, Limits, Recovery, Stats, Store};
