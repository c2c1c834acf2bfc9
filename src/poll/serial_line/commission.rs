//! The commissioning read of a serial_line sensor (`fieldlink read`): opens the port, reads
//! (asking with the query, if any) until a few lines of the device were seen, and reports
//! each line with the points extracted from it, and what was skipped on the way.
//!
//! Owns only this one-shot read and its report; framing, selection and extraction are the
//! bus task's own code (`codec`, `extract`), so what `read` shows is what `run` does.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::{timeout_at, Instant};
use tokio_serial::{ClearBuffer, SerialPort};

use crate::config::{Bus, BusKind, Device};
use crate::model::Value;
use crate::poll::commission::ReadOnceError;
use crate::poll::serial_port::{self, describe_open_error};

use super::codec::{Frame, LineCodec};
use super::extract::{extract, select, Selection};
use super::source::{send_query, READ_CHUNK};

/// What `fieldlink read` shows of a serial_line sensor, in the order it happened.
#[derive(Debug)]
pub struct LineReadReport {
    pub device: String,
    /// The port, for messages.
    pub path: std::path::PathBuf,
    /// Whether the device has a line `filter` (a hint when no line arrives).
    pub filtered: bool,
    pub events: Vec<LineEvent>,
}

impl LineReadReport {
    /// The lines of the device that were read.
    pub fn lines(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, LineEvent::Line { .. }))
            .count()
    }
}

/// One thing that happened while reading.
#[derive(Debug)]
pub enum LineEvent {
    /// A line that is not text was skipped (wrong baud rate, noise).
    NotText,
    /// A line longer than `max_line` was skipped.
    Overlong { max_line: usize },
    /// A line of the device failed its checksum and was skipped.
    BadChecksum { error: String, text: String },
    /// The `n`-th line of the device, with every point's value.
    Line {
        n: usize,
        text: String,
        points: Vec<LinePointValue>,
    },
    /// Nothing for the device arrived within `wait` for the `n`-th line.
    Silent { n: usize, wait: Duration },
}

/// One point extracted from a line: its value, or why there is none.
#[derive(Debug)]
pub struct LinePointValue {
    pub name: String,
    pub value: Result<Value, String>,
    pub unit: Option<String>,
}

/// Reads up to `lines` lines of `device` on `bus`. A streaming sensor that stays silent for
/// `stale_after` ends the read; a query sensor is asked again for each line.
pub async fn read_once(
    bus: &Bus,
    device: &Device,
    lines: usize,
) -> Result<LineReadReport, ReadOnceError> {
    if device.bus != bus.name {
        return Err(ReadOnceError::WrongBus {
            device: device.name.clone(),
            device_bus: device.bus.clone(),
            bus: bus.name.clone(),
        });
    }
    let BusKind::SerialLine(line) = &bus.kind else {
        return Err(ReadOnceError::WrongBus {
            device: device.name.clone(),
            device_bus: device.bus.clone(),
            bus: bus.name.clone(),
        });
    };
    let Some(spec) = device.serial_line() else {
        return Err(ReadOnceError::WrongKind {
            device: device.name.clone(),
            kind: "serial_line",
        });
    };
    let path = &line.serial.path;
    let mut port = serial_port::open(&line.serial)
        .map_err(|e| ReadOnceError::Unreachable(describe_open_error(&e, path)))?;
    let _ = port.clear(ClearBuffer::Input);
    let mut codec = LineCodec::new(&line.terminator, line.max_line);
    let wait = spec
        .query
        .as_ref()
        .map_or(spec.stale_after, |q| q.response_timeout);
    let mut report = LineReadReport {
        device: device.name.clone(),
        path: path.clone(),
        filtered: spec.filter.is_some(),
        events: Vec::new(),
    };
    let mut buf = [0u8; READ_CHUNK];
    for n in 1..=lines.max(1) {
        if let Some(q) = &spec.query {
            send_query(&mut port, &mut codec, q)
                .await
                .map_err(|e| ReadOnceError::Lost(format!("{}: {e}", path.display())))?;
        }
        let deadline = Instant::now() + wait;
        let got = 'wait: loop {
            while let Some(frame) = codec.next_frame() {
                match frame {
                    Frame::Garbage => report.events.push(LineEvent::NotText),
                    Frame::Overlong => report.events.push(LineEvent::Overlong {
                        max_line: line.max_line,
                    }),
                    Frame::Line(text) => match select(spec, &text) {
                        Selection::Accepted(payload) => {
                            let payload = payload.to_owned();
                            break 'wait Some((text, payload));
                        }
                        Selection::BadChecksum(e) => report.events.push(LineEvent::BadChecksum {
                            error: e.to_string(),
                            text,
                        }),
                        Selection::NotForDevice => {}
                    },
                }
            }
            match timeout_at(deadline, port.read(&mut buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) => {
                    return Err(ReadOnceError::Lost(format!(
                        "{} hung up (end of file)",
                        path.display()
                    )))
                }
                Ok(Ok(k)) => codec.push(&buf[..k]),
                Ok(Err(e)) => {
                    return Err(ReadOnceError::Lost(format!(
                        "reading {} failed: {e}",
                        path.display()
                    )))
                }
            }
        };
        let Some((text, payload)) = got else {
            report.events.push(LineEvent::Silent { n, wait });
            if spec.query.is_some() {
                continue;
            }
            break;
        };
        let points = spec
            .points
            .iter()
            .map(|point| LinePointValue {
                name: point.name.clone(),
                value: extract(point, &payload).map_err(|e| e.to_string()),
                unit: point.unit.clone(),
            })
            .collect();
        report.events.push(LineEvent::Line { n, text, points });
    }
    Ok(report)
}
