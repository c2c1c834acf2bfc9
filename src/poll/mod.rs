//! Polling: one task per bus, turning the device map into readings.
//!
//! Owns the Modbus transports (TCP, RTU), request planning, decoding, the poll loop and
//! device availability (`modbus`), the serial-line sensors (`serial_line`), what both kinds
//! of serial bus do about their port (`serial_port`), and the commissioning read of either
//! kind of device ([`read_once`]). Hands every result to a [`SampleSink`]; never touches
//! MQTT or disk.
//!
//! This file only dispatches on the bus or device kind; each kind's module owns its loop.

pub mod backoff;
pub mod commission;
pub mod modbus;
pub mod serial_line;
pub mod serial_port;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Bus, BusKind, Device, DeviceKind};
use crate::health::Health;
use crate::model::SampleSink;
use crate::writes::router::Router;

pub use commission::ReadOnceError;
pub use modbus::commission::{ModbusReadReport, PointReport, RequestFailure, RequestReport};
pub use modbus::plan::{describe_plan, plan, plan_groups, PlanGroup, ReadRequest};
pub use modbus::reads::{Slot, SlotChange};
pub use modbus::scheduler::{BACKOFF_MAX, BACKOFF_MIN};
pub use modbus::{ExceptionCode, LinkError, RawData};
pub use serial_line::commission::{LineEvent, LinePointValue, LineReadReport};

/// Polls every device of `bus` until `cancel` fires, and runs the commands `commands` routes
/// to them between two requests. Serial buses serve one request at a
/// time; TCP devices run in parallel. Never returns early on device or transport errors.
pub async fn run_bus(
    bus: Bus,
    devices: Vec<Device>,
    sink: Arc<dyn SampleSink>,
    health: Arc<Health>,
    commands: Option<Arc<Router>>,
    cancel: CancellationToken,
) {
    match bus.kind {
        BusKind::SerialLine(_) => {
            serial_line::run_serial_line_bus(bus, devices, sink, health, cancel).await;
        }
        BusKind::ModbusRtu(_) | BusKind::ModbusTcp(_) | BusKind::ModbusRtuTcp(_) => {
            modbus::bus::run_modbus_bus(bus, devices, sink, health, commands, cancel).await;
        }
    }
}

/// What `fieldlink read` shows of one device, by its kind.
#[derive(Debug)]
pub enum ReadReport {
    Modbus(ModbusReadReport),
    SerialLine(LineReadReport),
}

/// How many lines of a serial_line sensor `fieldlink read` shows.
pub const READ_LINES: usize = 3;

/// One commissioning read of `device` on `bus`, whatever its kind: a Modbus device is polled
/// once with exactly the reads `run` makes; a serial_line sensor is read (asked, if it
/// answers queries) for [`READ_LINES`] lines.
pub async fn read_once(bus: &Bus, device: &Device) -> Result<ReadReport, ReadOnceError> {
    match &device.kind {
        DeviceKind::Modbus(_) => modbus::commission::read_once(bus, device)
            .await
            .map(ReadReport::Modbus),
        DeviceKind::SerialLine(_) => serial_line::commission::read_once(bus, device, READ_LINES)
            .await
            .map(ReadReport::SerialLine),
    }
}
