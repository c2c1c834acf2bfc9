//! Writes from MQTT: a command published on a point's `…/set` topic, checked, written by the
//! bus task, read back, and answered on `…/set/result`.
//!
//! Pure parts: `payload` (what a command and its result look like on the wire), `gate`
//! (every rule decided before a command may reach a bus) and `pending` (a bus's queue of
//! waiting commands, one per point). Moving parts: `router` (on the uplink's task: checks a
//! command and hands it to its bus loop's channel, never waiting), `inbox` (the bus loop's
//! side: waiting commands, the rules checked again right before the write), `command` (what
//! travels between them). The bus loop runs a command between two requests
//! (`poll::modbus::write::run_command`), so a write is fenced from polls by construction: a
//! reading read before the write was sent upstream before the read-back. The register encoding
//! is the read codec run backwards (`poll::modbus::codec`), so a value is written with
//! exactly the scale, type and word order it is read with.

pub mod command;
pub mod gate;
pub mod inbox;
pub mod payload;
pub mod pending;
pub mod router;
