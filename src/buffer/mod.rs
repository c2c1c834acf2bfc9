//! The outbox and its durable store-and-forward buffer: the only module that touches the disk.
//!
//! The outbox wing: records waiting for the broker's acknowledgement, in memory and on
//! disk. Built from the ground up, each file importing only those above it in this list:
//! - [`record`] and [`clock`]: what a record is, and the clocks ages are measured by;
//! - [`schema`] (the row format and tables), [`age`] (the `max_age` rule), `recover`
//!   (salvage of a damaged file), [`store`] (`buffer.db`: bounds, durability) and `stats`;
//! - [`state`]: the outbox's memory and every decision, sans I/O, time passed in;
//! - `io`: the thread that executes the state's plans against the store;
//! - [`outbox`]: the API the uplink and the poller use, with or without a disk;
//!
//! and [`lock`], the one-agent-per-directory lock. Must not touch the network, the retain
//! flag or MQTT packet ids: it answers `is_newest` and the uplink decides.
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

pub mod age;
pub mod clock;
pub mod error;
mod io;
pub mod lock;
pub mod outbox;
pub mod plan;
mod rate;
pub mod record;
mod recover;
pub mod rules;
pub mod schema;
pub mod state;
mod stats;
pub mod status;
pub mod store;

pub use error::BufferError;
pub use outbox::{IoDriver, Outbox, Settings, Status};
pub use record::{ReadingNumber, Record};
pub use recover::Recovery;
pub use stats::{stats, Stats};
pub use store::{Limits, Store};
