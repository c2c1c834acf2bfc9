//! Modbus RTU over TCP: RTU frames (CRC included) on a TCP connection to a serial device
//! server (USR-TCP232, Moxa NPort in raw TCP mode, Waveshare RS485-to-Ethernet).
//!
//! The far end is an RS-485 line, so the rules of `rtu` hold: one request at a time, the
//! inter-request silence, a late reply waited out before the next request (it would arrive
//! on this same connection and pass for the next answer), a garbled reply asked again once.
//! The connection is TCP's: opened on first use, and reopened after the server closed or
//! reset it; a request that met a close before any byte of its reply is asked again once on
//! the fresh connection (servers that drop idle connections), as `tcp` does. A timeout keeps
//! the connection: the server answered nothing because the unit was silent, and reconnecting
//! would not make it answer.
//!
//! The framing is tokio-modbus' RTU client attached to the socket (no framing by hand), over
//! the stream wrapper shared with `rtu` (`rtu_exchange`).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};
use tokio_modbus::client::Context;
use tokio_modbus::{Request, Response};

use crate::config::ModbusRtuTcp;

use super::link::{ExceptionCode, LinkError, ModbusLink};
use super::rtu_exchange::{exchange, received, wait_out, SharedStream};
use super::tcp::open_socket;

pub struct RtuTcpLink {
    settings: ModbusRtuTcp,
    stream: Option<SharedStream<TcpStream>>,
    ctx: Option<Context>,
    /// The last exchange went wrong: wait out the line before the next request.
    dirty: bool,
    last_exchange_end: Option<Instant>,
}

/// How one try ended, as far as the connection could tell.
enum Try<T> {
    Done(Result<Result<T, ExceptionCode>, LinkError>),
    /// The server had closed or reset the connection and no byte of the reply came: the
    /// request never reached the line, so asking again on a fresh connection is safe.
    ClosedBeforeReply,
}

impl RtuTcpLink {
    pub fn new(settings: ModbusRtuTcp) -> Self {
        RtuTcpLink {
            settings,
            stream: None,
            ctx: None,
            dirty: false,
            last_exchange_end: None,
        }
    }

    async fn attempt<T>(
        &mut self,
        unit: u8,
        request: Request<'static>,
        check: &(impl Fn(Response) -> Result<T, LinkError> + Sync),
    ) -> Try<T> {
        let limit = self.settings.response_timeout;
        let stream = match &self.stream {
            Some(stream) => stream.clone(),
            None => match open_socket(self.settings.address.clone(), limit).await {
                Ok(socket) => {
                    let stream = SharedStream::new(socket);
                    self.stream = Some(stream.clone());
                    self.ctx = None;
                    self.dirty = false;
                    stream
                }
                Err(e) => return Try::Done(Err(e)),
            },
        };
        if self.dirty {
            self.ctx = None;
            wait_out(&stream, limit).await;
            self.dirty = false;
        }
        if let Some(end) = self.last_exchange_end {
            sleep_until(end + self.settings.inter_request_delay).await;
        }
        let outcome = exchange(&mut self.ctx, &stream, unit, request, limit, check).await;
        self.last_exchange_end = Some(Instant::now());
        let closed = stream.ended() || matches!(outcome, Err(LinkError::Transport(_)));
        if outcome.is_err() && closed {
            self.stream = None;
            self.ctx = None;
            if received(&stream) == 0 {
                return Try::ClosedBeforeReply;
            }
            return Try::Done(Err(LinkError::Closed(format!(
                "the device server closed the connection in the middle of a reply ({} bytes in)",
                received(&stream)
            ))));
        }
        if outcome.is_err() {
            self.dirty = true;
        }
        Try::Done(outcome)
    }
}

impl ModbusLink for RtuTcpLink {
    /// A request, asked again once after a close before any reply (on a fresh connection)
    /// or after a garbled reply (RS-485 noise, once the line settled).
    async fn transact<T: Send>(
        &mut self,
        unit: u8,
        request: Request<'static>,
        check: impl Fn(Response) -> Result<T, LinkError> + Send + Sync,
    ) -> Result<Result<T, ExceptionCode>, LinkError> {
        match self.attempt(unit, request.clone(), &check).await {
            Try::Done(Err(LinkError::Protocol(why))) => {
                tracing::debug!(address = %self.settings.address, unit, "{why}; asking again");
            }
            Try::ClosedBeforeReply => {
                tracing::debug!(address = %self.settings.address, unit, "the device server closed the connection before answering; reconnecting and asking again");
            }
            Try::Done(done) => return done,
        }
        match self.attempt(unit, request, &check).await {
            Try::Done(done) => done,
            Try::ClosedBeforeReply => Err(LinkError::Closed(format!(
                "the device server at {} closed the connection before answering, twice in a \
                 row (also right after connecting): it may accept fewer connections than are \
                 open to it (often one), or be set to another mode than raw TCP",
                self.settings.address
            ))),
        }
    }
}

/// How long one request may take on this bus, for the health allowance.
pub fn per_request(settings: &ModbusRtuTcp) -> Duration {
    settings.response_timeout * 6 + settings.inter_request_delay
}
