//! Serial-line sensors: ASCII lines streamed by, or asked of, a device on a serial port
//! (NMEA GPS, weather stations, scales, gas analysers).
//!
//! Owns the `serial_line` bus task ([`run_serial_line_bus`]), its framing (`codec`), line
//! selection and point extraction (`extract`), checksums (`checksum`), the port lifecycle
//! (open, flush, lose, reopen: `source`), the per-bus counters ([`SerialLineCounters`]) and
//! the commissioning read (`commission`).
//! Hands readings and availability to a [`SampleSink`](crate::model::SampleSink); never
//! touches MQTT, the disk or the Modbus code.
//!
//! Counters for the health topic: every bus task keeps a [`SerialLineCounters`] in a
//! process-wide registry under its bus name. Read them with [`all_counters`] (a snapshot of
//! every serial_line bus) or [`counters`]`(bus).snapshot()`. They only grow.

pub mod checksum;
pub mod codec;
pub mod commission;
mod counters;
pub mod extract;
mod source;

pub use counters::{all_counters, counters, health_section, SerialLineCounters, SerialLineCounts};
pub use source::run_serial_line_bus;
