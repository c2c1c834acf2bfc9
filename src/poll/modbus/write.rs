//! A write as a bus makes it: the encoded value on the wire with the point's function, then
//! the point read back and decoded by the same codec as every poll, so what a write reports
//! is what the device holds afterwards, not what was asked.
//!
//! Used by `fieldlink write` (commissioning) and by the bus task for commands from MQTT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Bus, BusKind, Device, Point, Table, WriteFunction};
use crate::model::{unix_ms_now, Reading, Sample, SampleSink, Value};
use crate::poll::commission::ReadOnceError;
use crate::writes::command::{answer, Queued};
use crate::writes::inbox::Inbox;
use crate::writes::payload::Status;

use super::codec::Encoded;
use super::commission::RequestFailure;
use super::link::{LinkError, ModbusLink, RawData, WriteData, WriteRequest};
use super::plan::ReadRequest;
use super::reads::decode_point;
use super::rtu::RtuLink;
use super::rtu_tcp::RtuTcpLink;
use super::tcp::TcpLink;

/// What one write did.
#[derive(Debug)]
pub struct WriteReport {
    pub request: WriteRequest,
    /// The write itself: confirmed by the device, or why not.
    pub written: Result<(), RequestFailure>,
    pub write_time: Duration,
    /// The point read back after the write (also after a failed one: a write whose reply
    /// was lost may still have happened). `None` when the link was gone.
    pub read_back: Option<ReadBack>,
}

#[derive(Debug)]
pub struct ReadBack {
    pub raw: Result<RawData, RequestFailure>,
    pub value: Result<Value, String>,
}

/// The Modbus request that writes `encoded` to `point`.
pub fn write_request(point: &Point, encoded: &Encoded) -> WriteRequest {
    let function = point
        .write
        .as_ref()
        .map_or(WriteFunction::Single, |w| w.function);
    let data = match encoded {
        Encoded::Registers(words) => WriteData::Registers(words.clone()),
        Encoded::Coil(bit) => WriteData::Coils(vec![*bit]),
    };
    WriteRequest {
        start: point.address,
        data,
        function,
    }
}

/// The read that reads `point` alone back (its `points` index is 0: the point itself).
pub fn read_back_request(point: &Point) -> ReadRequest {
    ReadRequest {
        table: point.table,
        start: point.address,
        count: if point.table.is_bits() {
            1
        } else {
            point.data_type.width()
        },
        points: vec![0],
    }
}

/// Writes `encoded` to `point` of unit `unit`, then reads the point back.
pub async fn write_point<L: ModbusLink>(
    link: &mut L,
    unit: u8,
    point: &Point,
    encoded: &Encoded,
) -> WriteReport {
    let request = write_request(point, encoded);
    let started = Instant::now();
    let result = link.write(unit, &request).await;
    let write_time = started.elapsed();
    let (written, link_gone) = match result {
        Ok(Ok(())) => (Ok(()), false),
        Ok(Err(exception)) => (Err(RequestFailure::Exception(exception)), false),
        Err(e) => {
            let gone = matches!(e, LinkError::Unreachable(_));
            (Err(failure(&e)), gone)
        }
    };
    let read_back = if link_gone {
        None
    } else {
        let read = read_back_request(point);
        Some(match link.read(unit, &read).await {
            Ok(Ok(raw)) => ReadBack {
                value: decode_point(point, &read, &raw),
                raw: Ok(raw),
            },
            Ok(Err(exception)) => ReadBack {
                raw: Err(RequestFailure::Exception(exception)),
                value: Err(format!(
                    "the read-back was refused: exception {}",
                    u8::from(exception)
                )),
            },
            Err(e) => ReadBack {
                value: Err(format!("the read-back failed: {e}")),
                raw: Err(failure(&e)),
            },
        })
    };
    WriteReport {
        request,
        written,
        write_time,
        read_back,
    }
}

fn failure(e: &LinkError) -> RequestFailure {
    RequestFailure::Link {
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// Runs one command from MQTT on the bus loop's link: the write, the read-back published as
/// the point's new reading, the result, and an audit line in the log. Returns the point when
/// it was read back good, so the loop can forget that it had published it bad.
pub(crate) async fn run_command<L: ModbusLink>(
    bus: &str,
    link: &mut L,
    command: Queued,
    inbox: &Inbox,
    sink: &dyn SampleSink,
) -> Option<(Arc<str>, Arc<str>)> {
    let target = &command.target;
    let report = write_point(link, target.unit, &target.point, &command.admitted.encoded).await;
    let reached_the_wire = report.read_back.is_some()
        || !matches!(&report.written, Err(RequestFailure::Link { kind, .. }) if *kind == "unreachable");
    if reached_the_wire {
        inbox.wrote(target, Instant::now());
    }
    let read_back = report
        .read_back
        .as_ref()
        .and_then(|r| r.value.as_ref().ok());
    if let Some(value) = read_back {
        sink.send(Sample::WrittenValue(Reading {
            device: target.device.clone(),
            point: target.point_name.clone(),
            value: Ok(value.clone()),
            unit: target.point.unit.as_deref().map(Arc::from),
            ts_ms: unix_ms_now(),
        }));
    }
    let read_back_error = match &report.read_back {
        None => Some("the point was not read back: the link is gone".to_string()),
        Some(r) => r.value.as_ref().err().cloned(),
    };
    let (status, error) = match &report.written {
        // Confirmed by the device; a read-back that failed is said but does not undo it.
        Ok(()) => (Status::Ok, read_back_error),
        Err(RequestFailure::Exception(e)) => (
            Status::Failed,
            Some(format!(
                "the device refused the write with exception {} ({})",
                u8::from(*e),
                crate::model::exception_name(u8::from(*e))
            )),
        ),
        Err(failure) => (Status::Failed, Some(format!("the write failed: {failure}"))),
    };
    let outcome = command.outcome(status, read_back.cloned(), error);
    tracing::info!(
        bus,
        device = %target.device,
        point = %target.point_name,
        requested = %command.admitted.requested,
        written = %describe_write(&report.request),
        read_back = %read_back.map_or_else(|| "none".to_string(), ToString::to_string),
        write_ms = report.write_time.as_millis() as u64,
        "write {}{}",
        status.as_str(),
        outcome.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
    );
    answer(sink, target, &outcome);
    read_back.map(|_| (target.device.clone(), target.point_name.clone()))
}

/// `fieldlink write`: one write and its read-back on a fresh link to the device's bus.
pub async fn write_once(
    bus: &Bus,
    device: &Device,
    point: &Point,
    encoded: &Encoded,
) -> Result<WriteReport, ReadOnceError> {
    let Some(modbus) = device.modbus() else {
        return Err(ReadOnceError::WrongKind {
            device: device.name.clone(),
            kind: "Modbus",
        });
    };
    let report = match &bus.kind {
        BusKind::ModbusRtu(rtu) => {
            let mut link = RtuLink::new(&bus.name, rtu.clone());
            write_point(&mut link, modbus.unit, point, encoded).await
        }
        BusKind::ModbusTcp(tcp) => {
            let mut link = TcpLink::new(&tcp.address, tcp.timeout);
            write_point(&mut link, modbus.unit, point, encoded).await
        }
        BusKind::ModbusRtuTcp(settings) => {
            let mut link = RtuTcpLink::new(settings.clone());
            write_point(&mut link, modbus.unit, point, encoded).await
        }
        BusKind::SerialLine(_) => {
            return Err(ReadOnceError::WrongBus {
                device: device.name.clone(),
                device_bus: device.bus.clone(),
                bus: bus.name.clone(),
            })
        }
    };
    if let (Err(RequestFailure::Link { message, kind }), None) =
        (&report.written, &report.read_back)
    {
        if *kind == "unreachable" {
            return Err(ReadOnceError::Unreachable(message.clone()));
        }
    }
    Ok(report)
}

/// How a write request reads in reports: "function 6 at holding 10: 00D7".
pub fn describe_write(request: &WriteRequest) -> String {
    let (function, table, data) = match (&request.data, request.function) {
        (WriteData::Registers(w), WriteFunction::Single) if w.len() == 1 => {
            (6, Table::Holding, hex(w))
        }
        (WriteData::Registers(w), _) => (16, Table::Holding, hex(w)),
        (WriteData::Coils(b), WriteFunction::Single) if b.len() == 1 => (5, Table::Coil, bits(b)),
        (WriteData::Coils(b), _) => (15, Table::Coil, bits(b)),
    };
    format!(
        "function {function} at {} {}: {data}",
        crate::config::units::table_name(table),
        request.start
    )
}

fn hex(words: &[u16]) -> String {
    words
        .iter()
        .map(|w| format!("{w:04X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn bits(b: &[bool]) -> String {
    b.iter().map(|&b| if b { '1' } else { '0' }).collect()
}
