//! Polling: one task per bus, turning the device map into readings.
//!
//! Owns the Modbus transports (TCP, RTU), request planning, decoding and device
//! availability. Hands every result to the uplink's [`Publisher`]; never touches MQTT or disk.

pub mod modbus;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Bus, Device};
use crate::health::Health;
use crate::uplink::Publisher;

/// Polls every device of `bus` until `cancel` fires. Serial buses serve one request at a
/// time; TCP devices run in parallel. Never returns early on device or transport errors.
pub async fn run_bus(
    bus: Bus,
    devices: Vec<Device>,
    publisher: Arc<Publisher>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let _ = (bus, devices, publisher, health);
    cancel.cancelled().await;
}
