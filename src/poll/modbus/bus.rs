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
use tokio_util::sync::CancellationToken;

use crate::config::{Bus, BusKind, Device, TcpConnection};
use crate::health::Health;
use crate::model::SampleSink;
use crate::writes::inbox::Inbox;
use crate::writes::router::Router;

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
    let inbox = |names: &[&Device]| {
        commands.as_ref().map_or_else(Inbox::none, |router| {
            router.inbox(names.iter().map(|d| d.name.as_str()))
        })
    };
    let start = tokio::time::Instant::now();
    match bus.kind {
        BusKind::ModbusRtu(rtu) => {
            let per_request = rtu.response_timeout * 6 + rtu.inter_request_delay;
            let polled: Vec<PolledDevice> = devices
                .iter()
                .filter_map(|d| PolledDevice::new(d, start))
                .collect();
            let beat =
                health.register(format!("bus {}", bus.name), allowance(&polled, per_request));
            let link = RtuLink::new(&bus.name, rtu);
            let mut inbox = inbox(&devices.iter().collect::<Vec<_>>());
            run_loop(
                &bus.name,
                link,
                polled,
                &mut inbox,
                sink.as_ref(),
                &beat,
                &cancel,
            )
            .await;
        }
        BusKind::ModbusRtuTcp(settings) => {
            let polled: Vec<PolledDevice> = devices
                .iter()
                .filter_map(|d| PolledDevice::new(d, start))
                .collect();
            let beat = health.register(
                format!("bus {}", bus.name),
                allowance(&polled, rtu_tcp::per_request(&settings)),
            );
            let link = RtuTcpLink::new(settings);
            let mut inbox = inbox(&devices.iter().collect::<Vec<_>>());
            run_loop(
                &bus.name,
                link,
                polled,
                &mut inbox,
                sink.as_ref(),
                &beat,
                &cancel,
            )
            .await;
        }
        BusKind::ModbusTcp(tcp) if tcp.connection_for(devices.len()) == TcpConnection::Shared => {
            let polled: Vec<PolledDevice> = devices
                .iter()
                .filter_map(|d| PolledDevice::new(d, start))
                .collect();
            // Connecting and the request each get the timeout.
            let beat = health.register(
                format!("bus {}", bus.name),
                allowance(&polled, tcp.timeout * 2),
            );
            let link = TcpLink::new(&tcp.address, tcp.timeout);
            let mut inbox = inbox(&devices.iter().collect::<Vec<_>>());
            run_loop(
                &bus.name,
                link,
                polled,
                &mut inbox,
                sink.as_ref(),
                &beat,
                &cancel,
            )
            .await;
        }
        BusKind::ModbusTcp(tcp) => {
            let mut loops = JoinSet::new();
            for device in devices {
                let Some(polled) = PolledDevice::new(&device, start) else {
                    continue;
                };
                let polled = vec![polled];
                // Connecting and the request each get the timeout.
                let beat = health.register(
                    format!("bus {} device {}", bus.name, device.name),
                    allowance(&polled, tcp.timeout * 2),
                );
                let link = TcpLink::new(&tcp.address, tcp.timeout);
                let mut inbox = inbox(&[&device]);
                let (bus_name, sink, cancel) = (bus.name.clone(), sink.clone(), cancel.clone());
                loops.spawn(async move {
                    let sink = sink.as_ref();
                    run_loop(&bus_name, link, polled, &mut inbox, sink, &beat, &cancel).await;
                });
            }
            while loops.join_next().await.is_some() {}
        }
        BusKind::SerialLine(_) => {
            tracing::warn!(bus = %bus.name, "run_modbus_bus was given a serial_line bus; it polls nothing");
            cancel.cancelled().await;
        }
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
