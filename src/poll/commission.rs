//! What the commissioning read (`fieldlink read`) of either kind of device can fail with.
//! Each kind's read lives with its bus code (`modbus::commission`,
//! `serial_line::commission`); [`crate::poll::read_once`] picks one by the device's kind.

/// Why a commissioning read showed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnceError {
    #[error("device {device} is on bus {device_bus}, not on bus {bus}")]
    WrongBus {
        device: String,
        device_bus: String,
        bus: String,
    },
    /// The device is not of the kind this read is for (a caller's mistake: a validated
    /// config puts every device on a bus of its kind).
    #[error("device {device} is not a {kind} device")]
    WrongKind { device: String, kind: &'static str },
    /// The port could not be opened or the endpoint not connected: nothing was read.
    #[error("{0}")]
    Unreachable(String),
    /// The port failed while reading (hung up, read error, a query that could not be
    /// written): what was read before is lost with it.
    #[error("{0}")]
    Lost(String),
}
