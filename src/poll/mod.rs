//! Polling: one task per bus, turning the device map into readings.
//!
//! Owns the Modbus transports (TCP, RTU), request planning, decoding and device
//! availability. Hands every result to a [`SampleSink`]; never touches MQTT or disk.
//!
//! Concurrency: a serial (RTU) bus is one loop serving its devices strictly one request at a
//! time. A TCP bus runs one loop and one connection per device: tokio-modbus contexts carry
//! one request at a time, and after a timeout a TCP context must be thrown away (#324), so a
//! dead unit behind a gateway would otherwise stall and reconnect its healthy neighbours too.
//! The cost is one connection per device; gateways that cap connections (often 4-16) need
//! their devices split over fewer entries or a longer interval.
//!
//! Health: each loop registers a [`Beat`](crate::health::Beat) (`bus NAME` for RTU, `bus NAME
//! device NAME` for TCP) and ticks it every turn, at least every second, also while its
//! devices back off.

pub mod backoff;
pub mod modbus;
mod scheduler;
pub mod serial_line;
pub mod serial_port;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Bus, BusKind, Device};
use crate::health::Health;
use crate::model::{SampleSink, Value};

pub use modbus::plan::{describe_plan, plan, plan_groups, PlanGroup, ReadRequest};
pub use modbus::reads::{Slot, SlotChange};
pub use modbus::{ExceptionCode, LinkError, RawData};
pub use scheduler::{BACKOFF_MAX, BACKOFF_MIN};

use modbus::link::ModbusLink;
use modbus::rtu::RtuLink;
use modbus::tcp::TcpLink;
use scheduler::{run_loop, PolledDevice};

/// Polls every device of `bus` until `cancel` fires. Serial buses serve one request at a
/// time; TCP devices run in parallel. Never returns early on device or transport errors.
pub async fn run_bus(
    bus: Bus,
    devices: Vec<Device>,
    sink: Arc<dyn SampleSink>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let start = tokio::time::Instant::now();
    match bus.kind {
        BusKind::SerialLine(_) => {
            serial_line::run_serial_line_bus(bus, devices, sink, health, cancel).await;
        }
        BusKind::ModbusRtu(rtu) => {
            let per_request = rtu.response_timeout * 6 + rtu.inter_request_delay;
            let polled: Vec<PolledDevice> = devices
                .iter()
                .map(|d| PolledDevice::new(d, start))
                .collect();
            let beat =
                health.register(format!("bus {}", bus.name), allowance(&polled, per_request));
            let link = RtuLink::new(&bus.name, rtu);
            run_loop(&bus.name, link, polled, sink.as_ref(), &beat, &cancel).await;
        }
        BusKind::ModbusTcp(tcp) => {
            let mut loops = JoinSet::new();
            for device in devices {
                let polled = vec![PolledDevice::new(&device, start)];
                // Connecting and the request each get the timeout.
                let beat = health.register(
                    format!("bus {} device {}", bus.name, device.name),
                    allowance(&polled, tcp.timeout * 2),
                );
                let link = TcpLink::new(&tcp.address, tcp.timeout);
                let (bus_name, sink, cancel) = (bus.name.clone(), sink.clone(), cancel.clone());
                loops.spawn(async move {
                    run_loop(&bus_name, link, polled, sink.as_ref(), &beat, &cancel).await;
                });
            }
            while loops.join_next().await.is_some() {}
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

/// One request of a [`read_once`], as it went.
#[derive(Debug)]
pub struct RequestReport {
    /// The interval group the request belongs to.
    pub interval: Duration,
    pub request: ReadRequest,
    /// The raw registers or bits, or why there are none.
    pub outcome: Result<RawData, RequestFailure>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// The device answered and refused.
    Exception(ExceptionCode),
    /// The wire failed: `kind` is "timeout", "closed", "transport", "protocol" or
    /// "unreachable"; `message` says what happened in words.
    Link { kind: &'static str, message: String },
}

impl std::fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestFailure::Exception(e) => write!(
                f,
                "exception {} ({})",
                u8::from(*e),
                crate::model::exception_name(u8::from(*e))
            ),
            RequestFailure::Link { message, .. } => f.write_str(message),
        }
    }
}

/// One point of a [`read_once`]: its decoded, scaled value, or why there is none.
#[derive(Debug)]
pub struct PointReport {
    /// Index into `device.points`.
    pub index: usize,
    pub name: String,
    /// Index into [`ReadReport::requests`].
    pub request: usize,
    pub value: Result<Value, String>,
}

/// What `fieldlink read` prints: every request made (all interval groups, in plan order: the
/// reads `run` makes, including a merged read the device refused and the single reads that
/// replaced it), then every point in config order.
#[derive(Debug)]
pub struct ReadReport {
    pub device: String,
    pub requests: Vec<RequestReport>,
    pub points: Vec<PointReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadOnceError {
    #[error("device {device} is on bus {device_bus}, not on bus {bus}")]
    WrongBus {
        device: String,
        device_bus: String,
        bus: String,
    },
    /// The port could not be opened or the endpoint not connected: nothing was read.
    #[error("{0}")]
    Unreachable(String),
}

/// One poll of one device, for commissioning: the reads `run` makes ([`Slot`], with the
/// exception-2 fallback to single reads), every one tried even after a failure (the
/// transport resets itself in between), so the report shows the whole picture.
pub async fn read_once(bus: &Bus, device: &Device) -> Result<ReadReport, ReadOnceError> {
    if device.bus != bus.name {
        return Err(ReadOnceError::WrongBus {
            device: device.name.clone(),
            device_bus: device.bus.clone(),
            bus: bus.name.clone(),
        });
    }
    match &bus.kind {
        BusKind::ModbusRtu(rtu) => read_with(RtuLink::new(&bus.name, rtu.clone()), device).await,
        BusKind::ModbusTcp(tcp) => read_with(TcpLink::new(&tcp.address, tcp.timeout), device).await,
        BusKind::SerialLine(_) => Err(ReadOnceError::Unreachable(
            "a serial_line device is read with poll::serial_line::read_serial_line_once".into(),
        )),
    }
}

async fn read_with<L: ModbusLink>(
    mut link: L,
    device: &Device,
) -> Result<ReadReport, ReadOnceError> {
    let mut reports: Vec<RequestReport> = Vec::new();
    for group in plan_groups(device) {
        for planned in group.requests {
            let mut slot: Slot<()> = Slot::new(planned, &device.points);
            let mut i = 0;
            while i < slot.reads().len() {
                let request = slot.reads()[i].request.clone();
                let started = Instant::now();
                let result = link.read(device.unit, &request).await;
                let elapsed = started.elapsed();
                let outcome = match result {
                    Ok(answer) => {
                        let change = slot.answered(i, &answer);
                        let outcome = answer.map_err(RequestFailure::Exception);
                        reports.push(RequestReport {
                            interval: group.interval,
                            request,
                            outcome,
                            elapsed,
                        });
                        if change == SlotChange::Split {
                            i = 0;
                        } else {
                            i += 1;
                        }
                        continue;
                    }
                    Err(LinkError::Unreachable(message)) if reports.is_empty() => {
                        return Err(ReadOnceError::Unreachable(message))
                    }
                    Err(e) => {
                        slot.failed(i);
                        Err(RequestFailure::Link {
                            kind: e.kind(),
                            message: e.to_string(),
                        })
                    }
                };
                reports.push(RequestReport {
                    interval: group.interval,
                    request,
                    outcome,
                    elapsed,
                });
                i += 1;
            }
        }
    }
    let mut points = Vec::with_capacity(device.points.len());
    for (index, point) in device.points.iter().enumerate() {
        // The last request that read the point: after a split, its single read.
        let Some(r) = reports
            .iter()
            .rposition(|r| r.request.points.contains(&index))
        else {
            continue;
        };
        let value = match &reports[r].outcome {
            Ok(raw) => scheduler::decode_point(point, &reports[r].request, raw),
            Err(failure) => Err(failure.to_string()),
        };
        points.push(PointReport {
            index,
            name: point.name.clone(),
            request: r,
            value,
        });
    }
    Ok(ReadReport {
        device: device.name.clone(),
        requests: reports,
        points,
    })
}
