//! Modbus RTU transport over a serial port: one request at a time, every call under a
//! timeout, and a clean line before the next request after anything went wrong.
//!
//! Owns the serial port and the RTU client context. Why the care (see FIELD-NOTES):
//! tokio-modbus' RTU client takes a late reply to a timed-out request as the answer to the
//! next one, and its framed stream stays errored after a decode error. So after a timeout or
//! a protocol error this link
//! 1. drops the client context (a fresh codec, no half-read frame),
//! 2. waits out the line: reads and discards until the line has been silent for one
//!    response timeout (bounded, so a babbling line cannot hold the bus forever),
//! 3. flushes the tty input queue (`tcflush(TCIFLUSH)`),
//!
//! and checks that every answer has exactly the quantity asked. A reply later than twice the
//! response timeout cannot be told from a fresh one by the protocol; the quantity check and
//! the unit/function checks of tokio-modbus catch all but a same-shaped read of the same
//! unit. An I/O error (unplugged adapter: reads return 0, writes EIO) closes the port; it is
//! reopened by path with backoff. It keeps the `inter_request_delay` of silence between
//! exchanges (tokio-modbus does not keep t3.5, #180).

use std::io;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::Slave;
use tokio_serial::SerialStream;

use crate::config::{ModbusRtu, Parity, SerialSettings};

use super::link::{check_response, classify, to_request, LinkError, ModbusLink, ReadResult};
use super::plan::ReadRequest;

const REOPEN_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(30);

pub struct RtuLink {
    bus: String,
    settings: ModbusRtu,
    port: Option<SharedPort>,
    ctx: Option<Context>,
    /// Something went wrong on the line: settle it before the next request.
    dirty: bool,
    last_exchange_end: Option<Instant>,
    reopen_at: Option<Instant>,
    open_failures: u32,
    /// The last open error logged, so a missing port is logged once, not every retry.
    open_error_logged: Option<String>,
}

impl RtuLink {
    pub fn new(bus: &str, settings: ModbusRtu) -> Self {
        RtuLink {
            bus: bus.to_string(),
            settings,
            port: None,
            ctx: None,
            dirty: false,
            last_exchange_end: None,
            reopen_at: None,
            open_failures: 0,
            open_error_logged: None,
        }
    }

    fn ensure_open(&mut self) -> Result<SharedPort, LinkError> {
        if let Some(port) = &self.port {
            return Ok(port.clone());
        }
        if let Some(at) = self.reopen_at {
            if Instant::now() < at {
                return Err(LinkError::Unreachable(
                    self.open_error_logged
                        .clone()
                        .unwrap_or_else(|| "serial port closed, reopening".into()),
                ));
            }
        }
        match open_port(&self.settings.serial) {
            Ok(stream) => {
                self.open_error_logged = None;
                let s = &self.settings.serial;
                tracing::info!(bus = %self.bus, path = %s.path.display(), baud = s.baud, data_bits = s.data_bits, parity = ?s.parity, stop_bits = s.stop_bits, "serial port open");
                self.open_failures = 0;
                self.reopen_at = None;
                let port = SharedPort(Arc::new(Mutex::new(stream)));
                // Whatever was queued before we owned the port is not an answer to us.
                port.flush_input();
                self.port = Some(port.clone());
                Ok(port)
            }
            Err(message) => {
                self.open_failures = self.open_failures.saturating_add(1);
                let delay = super::super::backoff::delay(
                    self.open_failures,
                    REOPEN_BACKOFF_MIN,
                    REOPEN_BACKOFF_MAX,
                );
                self.reopen_at = Some(Instant::now() + delay);
                if self.open_error_logged.as_deref() != Some(message.as_str()) {
                    tracing::error!(bus = %self.bus, path = %self.settings.serial.path.display(), error_kind = "unreachable", "{message}");
                    self.open_error_logged = Some(message.clone());
                }
                Err(LinkError::Unreachable(message))
            }
        }
    }

    /// Drops the port so it can be reopened by path (an unplugged adapter comes back under
    /// the same /dev/serial/by-id name only once every fd on the old one is closed).
    fn close_port(&mut self) {
        self.ctx = None;
        if let Some(port) = self.port.take() {
            port.release_exclusive();
        }
        self.open_failures = self.open_failures.saturating_add(1);
        self.reopen_at = Some(Instant::now() + REOPEN_BACKOFF_MIN);
    }

    async fn settle(&mut self, port: &SharedPort) {
        self.ctx = None;
        let quiet = self.settings.response_timeout;
        let give_up = Instant::now() + quiet * 4;
        let mut reader = port.clone();
        let mut sink = [0u8; 256];
        while Instant::now() < give_up {
            match timeout(quiet, reader.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
        port.flush_input();
        self.dirty = false;
    }
}

impl ModbusLink for RtuLink {
    async fn read(&mut self, unit: u8, request: &ReadRequest) -> ReadResult {
        let port = self.ensure_open()?;
        if self.dirty {
            self.settle(&port).await;
        }
        if let Some(end) = self.last_exchange_end {
            sleep_until(end + self.settings.inter_request_delay).await;
        }
        let ctx = self.ctx.get_or_insert_with(|| {
            tokio_modbus::client::rtu::attach_slave(port.clone(), Slave(unit))
        });
        ctx.set_slave(Slave(unit));
        let answer = timeout(
            self.settings.response_timeout,
            ctx.call(to_request(request)),
        )
        .await;
        self.last_exchange_end = Some(Instant::now());
        let outcome = match answer {
            Err(_) => Err(LinkError::Timeout(self.settings.response_timeout)),
            Ok(Err(e)) => Err(classify(e)),
            Ok(Ok(Err(exception))) => return Ok(Err(exception)),
            Ok(Ok(Ok(response))) => check_response(request, response).map(Ok),
        };
        match &outcome {
            Err(LinkError::Transport(_)) => self.close_port(),
            Err(_) => {
                self.ctx = None;
                self.dirty = true;
            }
            Ok(_) => {}
        }
        outcome
    }

    fn not_before(&self) -> Option<Instant> {
        match (&self.port, self.reopen_at) {
            (None, Some(at)) if at > Instant::now() => Some(at),
            _ => None,
        }
    }
}

/// Opens and configures the port; the error names the path, the cause and what to do.
pub fn open_port(s: &SerialSettings) -> Result<SerialStream, String> {
    let path = s.path.to_string_lossy();
    let builder = tokio_serial::new(path.as_ref(), s.baud)
        .data_bits(match s.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if s.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(tokio_serial::FlowControl::None);
    SerialStream::open(&builder).map_err(|e| {
        let hint = match e.kind {
            tokio_serial::ErrorKind::NoDevice => {
                "check the cable and the USB adapter, and use a stable /dev/serial/by-id/... path"
            }
            tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound) => {
                "check the cable and the USB adapter, and use a stable /dev/serial/by-id/... path"
            }
            tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied) => {
                "the service user needs to be in the dialout group"
            }
            _ if e.description.contains("EBUSY") => {
                "another program holds the port (ModemManager, a second fieldlink, a terminal)"
            }
            _ => "check the path and the serial settings (baud, data bits, parity, stop bits)",
        };
        format!(
            "cannot open serial port {path}: {} ({:?}); {hint}",
            e.description, e.kind
        )
    })
}

/// The serial stream, shared between the successive client contexts of one open port: a
/// context owns its transport, and we recreate contexts without reopening the port.
#[derive(Clone)]
struct SharedPort(Arc<Mutex<SerialStream>>);

impl SharedPort {
    fn lock(&self) -> std::sync::MutexGuard<'_, SerialStream> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flush_input(&self) {
        let guard = self.lock();
        // SAFETY: the fd belongs to the SerialStream we hold locked, so it is open for the
        // whole call; tcflush only discards queued input.
        let rc = unsafe { libc::tcflush(guard.as_raw_fd(), libc::TCIFLUSH) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "tcflush failed");
        }
    }

    fn release_exclusive(&self) {
        let _ = self.lock().set_exclusive(false);
    }
}

impl AsyncRead for SharedPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}
