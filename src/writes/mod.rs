//! Writes from MQTT: a command published on a point's `…/set` topic, checked, written by the
//! bus task, read back, and answered on `…/set/result`.
//!
//! Pure parts live here: `payload` (what a command and its result look like on the wire),
//! `gate` (every rule decided before a command may reach a bus) and `pending` (a bus's
//! queue of waiting commands, one per point). The register encoding
//! is the read codec run backwards (`poll::modbus::codec`), so a value is written with
//! exactly the scale, type and word order it is read with.

pub mod gate;
pub mod payload;
pub mod pending;

use std::time::Duration;

/// `command_max_age`: a command whose sender's `ts` is older than this is not run.
pub const DEFAULT_COMMAND_MAX_AGE: Duration = Duration::from_secs(30);
