//! Modbus RTU transport over a serial port: one request at a time, every call under a
//! timeout, and a clean line before the next request after anything went wrong.
//!
//! Owns the serial port and the RTU client context. Why the care
//! (see docs/design.md#tokio-modbus-017):
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
//! unit. It keeps the `inter_request_delay` of silence between exchanges (tokio-modbus does
//! not keep t3.5, #180).
//!
//! RS-485 noise: a garbled reply (bytes arrived but made no valid answer: a CRC error, a
//! frame cut short, a reply that does not match the request) is asked again once, after the
//! line settled, before it counts as a failure. tokio-modbus drops bytes it cannot frame and
//! waits on, so a garbled reply usually ends as a timeout: the port counts the bytes each
//! exchange received to tell it from silence. Silence is never asked again: a dead unit must
//! cost the line one response timeout, not two.
//!
//! The port's lifecycle follows the policy shared with serial_line buses
//! ([`serial_port`](crate::poll::serial_port)): an I/O error (unplugged adapter: reads
//! return 0, writes EIO), a hang-up seen while idle, or the path no longer naming the node
//! that was opened drops the port at once (the poller calls [`ModbusLink::watch`] every
//! [`WATCH_PERIOD`] between requests) and every device goes offline; the path is looked at
//! every [`WATCH_PERIOD`] and the port reopened as soon as it is back.

use std::io;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_modbus::client::Context;
use tokio_modbus::{Request, Response};
use tokio_serial::SerialStream;

use crate::config::ModbusRtu;
use crate::poll::serial_port::{self, describe_open_error, hung_up, PortWatch, WATCH_PERIOD};

use super::link::{ExceptionCode, LinkError, ModbusLink};
use super::rtu_exchange::{exchange, wait_out, SharedStream};

/// A reopened port counts as working after an answer from any device, or this long
/// without trouble (all its devices may be silent).
const SETTLED_AFTER: Duration = Duration::from_secs(5);

struct OpenPort {
    shared: SharedPort,
    opened_at: Instant,
    settled: bool,
}

pub struct RtuLink {
    settings: ModbusRtu,
    port: Option<OpenPort>,
    ctx: Option<Context>,
    /// Something went wrong on the line: settle it before the next request.
    dirty: bool,
    last_exchange_end: Option<Instant>,
    /// When to look for a lost port, and the down / back log lines.
    watch: PortWatch,
    /// Why the port is down, for every read refused while it stays down.
    down_reason: String,
    next_node_check: Instant,
    /// The port just went down (the outage was not reported yet): the next
    /// [`ModbusLink::watch`] hands it to the poller, so every device goes offline at once,
    /// not one by one as each tries.
    went_down: Option<String>,
}

impl RtuLink {
    pub fn new(bus: &str, settings: ModbusRtu) -> Self {
        RtuLink {
            watch: PortWatch::new(bus, &settings.serial.path),
            settings,
            port: None,
            ctx: None,
            dirty: false,
            last_exchange_end: None,
            down_reason: String::new(),
            next_node_check: Instant::now(),
            went_down: None,
        }
    }

    fn ensure_open(&mut self) -> Result<SharedPort, LinkError> {
        if let Some(port) = &self.port {
            return Ok(port.shared.clone());
        }
        if Instant::now() < self.watch.next_look() || !self.watch.look() {
            return Err(LinkError::Unreachable(self.down_reason.clone()));
        }
        let s = &self.settings.serial;
        match serial_port::open(s) {
            Ok(stream) => {
                if self.watch.is_down() {
                    tracing::debug!(bus = %self.watch.bus(), path = %s.path.display(), "serial port reopened");
                } else {
                    tracing::info!(bus = %self.watch.bus(), path = %s.path.display(), baud = s.baud, data_bits = s.data_bits, parity = ?s.parity, stop_bits = s.stop_bits, "serial port open");
                }
                self.watch.opened();
                let now = Instant::now();
                self.next_node_check = now + WATCH_PERIOD;
                let shared = SharedPort::new(stream);
                // Whatever was queued before we owned the port is not an answer to us.
                shared.flush_input();
                self.port = Some(OpenPort {
                    shared: shared.clone(),
                    opened_at: now,
                    settled: false,
                });
                self.dirty = false;
                Ok(shared)
            }
            Err(e) => {
                let why = describe_open_error(&e, &s.path);
                self.lose_port(why.clone());
                Err(LinkError::Unreachable(why))
            }
        }
    }

    /// Drops the port at once (an unplugged adapter comes back under the same
    /// /dev/ttyUSBn name only once every fd on the old one is closed) and starts looking for
    /// it again.
    fn lose_port(&mut self, why: String) {
        self.ctx = None;
        self.dirty = false;
        if let Some(port) = self.port.take() {
            port.shared.release_exclusive();
        }
        if !self.watch.is_down() {
            self.went_down = Some(why.clone());
        }
        self.watch.lost(&why);
        self.down_reason = why;
    }

    async fn settle(&mut self, port: &SharedPort) {
        self.ctx = None;
        wait_out(port, self.settings.response_timeout).await;
        port.flush_input();
        self.dirty = false;
    }
}

impl RtuLink {
    /// One request and its checked answer; the line is settled first if the last exchange
    /// went wrong.
    async fn exchange<T>(
        &mut self,
        unit: u8,
        request: Request<'static>,
        check: &(impl Fn(Response) -> Result<T, LinkError> + Sync),
    ) -> Result<Result<T, ExceptionCode>, LinkError> {
        let port = self.ensure_open()?;
        if self.dirty {
            self.settle(&port).await;
        }
        if let Some(end) = self.last_exchange_end {
            sleep_until(end + self.settings.inter_request_delay).await;
        }
        let outcome = exchange(
            &mut self.ctx,
            &port,
            unit,
            request,
            self.settings.response_timeout,
            check,
        )
        .await;
        self.last_exchange_end = Some(Instant::now());
        match &outcome {
            Err(LinkError::Transport(why)) => {
                let why = format!("the line failed: {why} (adapter unplugged?)");
                self.lose_port(why);
            }
            Err(_) => self.dirty = true,
            Ok(_) => {}
        }
        if let Some(open) = &mut self.port {
            if !open.settled && (outcome.is_ok() || open.opened_at.elapsed() >= SETTLED_AFTER) {
                open.settled = true;
                self.watch.settled();
            }
        }
        outcome
    }
}

impl RtuLink {}

impl ModbusLink for RtuLink {
    /// An exchange, asked once more after a garbled reply (RS-485 noise), once the line
    /// settled. Silence is never asked again (see the module doc).
    async fn transact<T: Send>(
        &mut self,
        unit: u8,
        request: Request<'static>,
        check: impl Fn(Response) -> Result<T, LinkError> + Send + Sync,
    ) -> Result<Result<T, ExceptionCode>, LinkError> {
        let first = self.exchange(unit, request.clone(), &check).await;
        match first {
            Err(LinkError::Protocol(why)) if self.port.is_some() => {
                tracing::debug!(bus = %self.watch.bus(), unit, "{why}; asking again");
                self.exchange(unit, request, &check).await
            }
            other => other,
        }
    }

    fn not_before(&self) -> Option<Instant> {
        let at = self.watch.next_look();
        (self.port.is_none() && at > Instant::now()).then_some(at)
    }

    fn watch_period(&self) -> Option<Duration> {
        Some(WATCH_PERIOD)
    }

    fn watch(&mut self) -> Option<LinkError> {
        if let Some(why) = self.went_down.take() {
            return Some(LinkError::Unreachable(why));
        }
        let port = self.port.as_ref()?;
        let now = Instant::now();
        if now < self.next_node_check {
            return None;
        }
        self.next_node_check = now + WATCH_PERIOD;
        let why = if hung_up(&*port.shared.lock()) {
            "the port hung up (adapter unplugged?)".to_owned()
        } else {
            self.watch.check_node().err()?
        };
        self.lose_port(why.clone());
        self.went_down = None;
        Some(LinkError::Unreachable(why))
    }
}

/// The serial port, shared by the client contexts built on it.
type SharedPort = SharedStream<SerialStream>;

impl SharedStream<SerialStream> {
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
