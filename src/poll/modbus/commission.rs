//! The commissioning read of a Modbus device (`fieldlink read`): one poll with exactly the
//! reads `run` makes, reported request by request with the raw data, then point by point.
//!
//! Owns only the walk through the plan and the report; the reads themselves, their
//! exception-2 fallback ([`Slot`]) and decoding are the poll loop's own code, so what `read`
//! shows is what `run` does.

use std::time::{Duration, Instant};

use crate::config::{Bus, BusKind, Device};
use crate::model::Value;
use crate::poll::commission::ReadOnceError;

use super::link::{ExceptionCode, LinkError, ModbusLink, RawData};
use super::plan::{plan_groups, ReadRequest};
use super::reads::decode_point;
use super::reads::{Slot, SlotChange};
use super::rtu::RtuLink;
use super::rtu_tcp::RtuTcpLink;
use super::tcp::TcpLink;

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
    /// Index into the device's Modbus points.
    pub index: usize,
    pub name: String,
    pub unit: Option<String>,
    /// Index into [`ModbusReadReport::requests`].
    pub request: usize,
    pub value: Result<Value, String>,
}

/// What `fieldlink read` shows of a Modbus device: every request made (all interval groups,
/// in plan order: the reads `run` makes, including a merged read the device refused and the
/// single reads that replaced it), then every point in config order.
#[derive(Debug)]
pub struct ModbusReadReport {
    pub device: String,
    pub requests: Vec<RequestReport>,
    pub points: Vec<PointReport>,
}

/// One poll of one device, for commissioning: the reads `run` makes ([`Slot`], with the
/// exception-2 fallback to single reads), every one tried even after a failure (the
/// transport resets itself in between), so the report shows the whole picture.
pub async fn read_once(bus: &Bus, device: &Device) -> Result<ModbusReadReport, ReadOnceError> {
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
        BusKind::ModbusRtuTcp(settings) => {
            read_with(RtuTcpLink::new(settings.clone()), device).await
        }
        BusKind::SerialLine(_) => Err(ReadOnceError::WrongBus {
            device: device.name.clone(),
            device_bus: device.bus.clone(),
            bus: bus.name.clone(),
        }),
    }
}

async fn read_with<L: ModbusLink>(
    mut link: L,
    device: &Device,
) -> Result<ModbusReadReport, ReadOnceError> {
    let Some(modbus) = device.modbus() else {
        return Err(ReadOnceError::WrongKind {
            device: device.name.clone(),
            kind: "Modbus",
        });
    };
    let mut reports: Vec<RequestReport> = Vec::new();
    for group in plan_groups(device) {
        for planned in group.requests {
            let mut slot: Slot<()> = Slot::new(planned, &modbus.points);
            let mut i = 0;
            while i < slot.reads().len() {
                let request = slot.reads()[i].request.clone();
                let started = Instant::now();
                let result = link.read(modbus.unit, &request).await;
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
    let mut points = Vec::with_capacity(modbus.points.len());
    for (index, point) in modbus.points.iter().enumerate() {
        // The last request that read the point: after a split, its single read.
        let Some(r) = reports
            .iter()
            .rposition(|r| r.request.points.contains(&index))
        else {
            continue;
        };
        let value = match &reports[r].outcome {
            Ok(raw) => decode_point(point, &reports[r].request, raw),
            Err(failure) => Err(failure.to_string()),
        };
        points.push(PointReport {
            index,
            name: point.name.clone(),
            unit: point.unit.clone(),
            request: r,
            value,
        });
    }
    Ok(ModbusReadReport {
        device: device.name.clone(),
        requests: reports,
        points,
    })
}
