//! The task of one Modbus bus: an RTU line, local or behind a serial device server
//! (`modbus_rtu_tcp`), is one loop serving its devices strictly one request at a time; a TCP
//! bus runs either one loop and one connection per device (`connection = "per_device"`) or
//! one loop on one shared connection (`"shared"`, the default when the bus has more than one
//! device).
//!
//! The trade: tokio-modbus contexts carry one request at a time, and after a timeout a TCP
//! context must be thrown away (#324), so on a shared connection a dead unit behind a gateway
//! costs its neighbours one timeout per poll and a reconnect. Per device, a dead unit delays
//! nobody, but every device takes a connection slot, and TCP-to-RS-485 gateways often accept
//! only 1 to 4 connections for all their unit ids: one connection per device would keep
//! being refused there, so several devices at one address share by default.
//!
//! Health: each loop registers a [`Beat`](crate::health::Beat) (`bus NAME` for RTU, `bus NAME
//! device NAME` for TCP) and ticks it every turn, at least every second, also while its
//! devices back off.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Bus, BusKind, Device, TcpConnection};
use crate::health::Health;
use crate::model::SampleSink;
use crate::writes::inbox::Inbox;
use crate::writes::router::Router;

use super::link::ModbusLink;
use super::rtu::RtuLink;
use super::rtu_tcp::{self, RtuTcpLink};
use super::scheduler::{run_loop, PolledDevice};
use super::tcp::TcpLink;

/// Polls every Modbus device of `bus` until `cancel` fires (devices of another kind are
/// ignored; a serial_line bus polls nothing here). Never returns early on device or
/// transport errors.
pub async fn run_modbus_bus(
    bus: Bus,
    devices: Vec<Device>,
    sink: Arc<dyn SampleSink>,
    health: Arc<Health>,
    commands: Option<Arc<Router>>,
    cancel: CancellationToken,
) {
    let shared = Shared {
        bus: bus.name.clone(),
        start: Instant::now(),
        sink,
        health,
        commands,
        cancel,
    };
    let name = format!("bus {}", bus.name);
    match bus.kind {
        BusKind::ModbusRtu(rtu) => {
            let per_request = rtu.response_timeout * 6 + rtu.inter_request_delay;
            let link = RtuLink::new(&bus.name, rtu);
            shared.serve(name, link, &devices, per_request).await;
        }
        BusKind::ModbusRtuTcp(settings) => {
            let per_request = rtu_tcp::per_request(&settings);
            let link = RtuTcpLink::new(settings);
            shared.serve(name, link, &devices, per_request).await;
        }
        // Connecting and the request each get the timeout.
        BusKind::ModbusTcp(tcp) if tcp.connection_for(devices.len()) == TcpConnection::Shared => {
            let link = TcpLink::new(&tcp.address, tcp.timeout);
            shared.serve(name, link, &devices, tcp.timeout * 2).await;
        }
        BusKind::ModbusTcp(tcp) => {
            let mut loops = JoinSet::new();
            for device in devices.into_iter().filter(|d| d.modbus().is_some()) {
                let name = format!("bus {} device {}", bus.name, device.name);
                let link = TcpLink::new(&tcp.address, tcp.timeout);
                let shared = shared.clone();
                loops.spawn(async move {
                    shared.serve(name, link, &[device], tcp.timeout * 2).await;
                });
            }
            while loops.join_next().await.is_some() {}
        }
        BusKind::SerialLine(_) => {
            tracing::warn!(bus = %bus.name, "run_modbus_bus was given a serial_line bus; it polls nothing");
            shared.cancel.cancelled().await;
        }
    }
}

/// What every loop of one bus shares.
#[derive(Clone)]
struct Shared {
    bus: String,
    start: Instant,
    sink: Arc<dyn SampleSink>,
    health: Arc<Health>,
    commands: Option<Arc<Router>>,
    cancel: CancellationToken,
}

impl Shared {
    /// One loop serving `devices` over `link`: its health beat (`name`), sized by the
    /// longest a request may take, and its command inbox.
    async fn serve<L: ModbusLink>(
        &self,
        name: String,
        link: L,
        devices: &[Device],
        per_request: Duration,
    ) {
        let polled: Vec<PolledDevice> = devices
            .iter()
            .filter_map(|d| PolledDevice::new(d, self.start))
            .collect();
        let beat = self.health.register(name, allowance(&polled, per_request));
        let mut inbox = self.commands.as_ref().map_or_else(Inbox::none, |router| {
            router.inbox(devices.iter().map(|d| d.name.as_str()))
        });
        let sink = self.sink.as_ref();
        run_loop(
            &self.bus,
            link,
            polled,
            &mut inbox,
            sink,
            &beat,
            &self.cancel,
        )
        .await;
    }
}

/// How long a loop may stay silent before health calls it stalled: its longest cycle, twice,
/// plus slack for a loaded Pi.
fn allowance(devices: &[PolledDevice], per_request: Duration) -> Duration {
    let worst = devices
        .iter()
        .map(|d| d.worst_cycle(per_request))
        .max()
        .unwrap_or_default();
    worst * 2 + Duration::from_secs(10)
}
