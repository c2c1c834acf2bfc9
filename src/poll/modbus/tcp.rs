//! Modbus TCP transport: one connection, every call under a timeout, reconnect after any
//! outer error, and a transparent second try when the device had closed the connection.
//!
//! Owns the TCP client context and the socket under it. After a timeout tokio-modbus' TCP
//! context answers every later call with `HeaderMismatch` (tokio-modbus #324), so any outer
//! error drops the connection and the next call reconnects. An exception keeps it.
//!
//! Devices and TCP-to-RS-485 gateways that close connections (after every reply, or after a
//! few seconds idle) are normal in the field, not failures. The socket is wrapped
//! ([`WatchedStream`]) so the link knows how a call ended on the wire:
//! - before a request is written, a non-blocking peek looks for a close (end of stream or
//!   reset) that already arrived: the link then reconnects before sending;
//! - a call that fails because the peer closed or reset the connection before any byte of
//!   the reply arrived is sent again once, on a fresh connection, within the same call. A
//!   read is idempotent, so asking again cannot do harm;
//! - a timeout, a reply cut short, or a second close in a row are real failures.
//!
//! tokio-modbus reports a peer's end of stream as `io::Error::last_os_error()`, which reads
//! "Success (os error 0)" or a stale errno; the wrapper's own record of what the socket did
//! replaces it with words.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{Request, Response, Slave};

use super::link::{classify, io_words, ExceptionCode, LinkError, ModbusLink};

pub struct TcpLink {
    address: String,
    timeout: Duration,
    wire: Option<Wire>,
}

/// One open connection: the client context over the watched socket, and what the socket saw.
struct Wire {
    ctx: Context,
    watch: Arc<Mutex<WireEvents>>,
}

impl TcpLink {
    /// `address` is `host:port`, or `host` alone for port 502.
    pub fn new(address: &str, timeout: Duration) -> Self {
        TcpLink {
            address: with_default_port(address),
            timeout,
            wire: None,
        }
    }
}

/// Resolves and connects within `limit`, with what failed in words. Free of `&TcpLink` so the
/// future stays `Send` (the context inside the link is not `Sync`).
async fn connect(address: String, limit: Duration) -> Result<Wire, LinkError> {
    let stream = open_socket(address, limit).await?;
    let watch = Arc::new(Mutex::new(WireEvents::default()));
    let stream = WatchedStream {
        inner: stream,
        watch: watch.clone(),
    };
    Ok(Wire {
        ctx: tokio_modbus::client::tcp::attach(stream),
        watch,
    })
}

/// A TCP connection to `address` (`host:port`) within `limit`, or what failed in words: the
/// socket under Modbus TCP here, and under RTU frames in `rtu_tcp`.
pub(super) async fn open_socket(address: String, limit: Duration) -> Result<TcpStream, LinkError> {
    let attempt = async {
        let targets: Vec<SocketAddr> = tokio::net::lookup_host(address.as_str())
            .await
            .map_err(|e| {
                format!(
                    "cannot resolve the host name of {address} ({}): check the address, and the \
                     gateway's DNS",
                    io_words(&e)
                )
            })?
            .collect();
        let mut last = format!("{address} resolves to no address: check the address");
        for target in targets {
            match TcpStream::connect(target).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = connect_failure(&address, target, &e),
            }
        }
        Err(last)
    };
    let stream = match timeout(limit, attempt).await {
        Err(_) => {
            return Err(LinkError::Unreachable(format!(
                "no answer from {address} within {} while connecting: check that the device \
                 or gateway is powered and reachable, and the address",
                humantime::format_duration(limit)
            )))
        }
        Ok(Err(why)) => return Err(LinkError::Unreachable(why)),
        Ok(Ok(s)) => s,
    };
    // Requests are tiny and latency-bound; Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn connect_failure(address: &str, target: SocketAddr, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!(
            "connection refused by {target}: nothing listens on that port; check the address \
             and port ({address}), and that the device's Modbus TCP server is enabled"
        ),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            format!("no route to {target}: check the address ({address}) and the gateway's network")
        }
        _ => format!(
            "cannot connect to {target} ({address}): {}; check the address and that the \
             device or gateway is powered and reachable",
            io_words(e)
        ),
    }
}

/// How a call ended, as far as the socket could tell.
enum CallEnd {
    /// The peer had closed or reset the connection and no byte of the reply arrived: the
    /// request never reached a device that could answer it, so asking again is safe.
    ClosedBeforeReply(&'static str),
    Other(LinkError),
}

impl ModbusLink for TcpLink {
    /// One request and its checked answer, asked again once on a fresh connection when the
    /// device had closed the old one before any byte of the reply.
    async fn transact<T: Send>(
        &mut self,
        unit: u8,
        request: Request<'static>,
        check: impl Fn(Response) -> Result<T, LinkError> + Send + Sync,
    ) -> Result<Result<T, ExceptionCode>, LinkError> {
        let mut reopened = false;
        loop {
            let wire = match self.wire.take() {
                Some(wire) => wire,
                None => connect(self.address.clone(), self.timeout).await?,
            };
            let (outcome, wire) = call(wire, unit, request.clone(), &check, self.timeout).await;
            self.wire = wire;
            match outcome {
                Ok(answer) => return Ok(answer),
                Err(CallEnd::ClosedBeforeReply(how)) if !reopened => {
                    tracing::debug!(address = %self.address, "{how}; reconnecting and asking again");
                    reopened = true;
                }
                Err(CallEnd::ClosedBeforeReply(how)) => {
                    return Err(LinkError::Closed(format!(
                        "{how}, twice in a row (also right after connecting): the device or \
                         gateway may accept fewer connections than are open to it, or drop \
                         requests for this unit id"
                    )))
                }
                Err(CallEnd::Other(e)) => return Err(e),
            }
        }
    }
}

impl TcpLink {}

/// One call on `wire`; gives the wire back when it is still usable.
async fn call<T>(
    mut wire: Wire,
    unit: u8,
    request: Request<'static>,
    check: &(impl Fn(Response) -> Result<T, LinkError> + Sync),
    limit: Duration,
) -> (Result<Result<T, ExceptionCode>, CallEnd>, Option<Wire>) {
    events(&wire.watch).begin_request();
    wire.ctx.set_slave(Slave(unit));
    let answer = timeout(limit, wire.ctx.call(request)).await;
    let outcome = match answer {
        Err(_) => Err(CallEnd::Other(LinkError::Timeout(limit))),
        Ok(Ok(Err(exception))) => return (Ok(Err(exception)), Some(wire)),
        Ok(Ok(Ok(response))) => match check(response) {
            Ok(answer) => return (Ok(Ok(answer)), Some(wire)),
            Err(e) => Err(CallEnd::Other(e)),
        },
        Ok(Err(e)) => Err(events(&wire.watch).explain(e)),
    };
    // The context is poisoned after a timeout (#324) and a stray reply could pair with the
    // next request: start over on a fresh connection.
    (outcome, None)
}

fn events(watch: &Mutex<WireEvents>) -> std::sync::MutexGuard<'_, WireEvents> {
    watch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the socket saw since the current request began.
#[derive(Debug, Default)]
struct WireEvents {
    /// Bytes of the reply received so far.
    reply_bytes: usize,
    /// How the peer ended the connection, when it did.
    closed: Option<&'static str>,
    /// Look for a close that already arrived before writing the request.
    check_before_send: bool,
}

impl WireEvents {
    fn begin_request(&mut self) {
        self.reply_bytes = 0;
        self.check_before_send = true;
    }

    fn saw_close(&mut self, how: &'static str) {
        self.closed.get_or_insert(how);
    }

    fn explain(&self, e: tokio_modbus::Error) -> CallEnd {
        let io_kind = match &e {
            tokio_modbus::Error::Transport(io) => Some(io.kind()),
            tokio_modbus::Error::Protocol(_) => None,
        };
        let closed = self.closed.or(match io_kind {
            Some(io::ErrorKind::ConnectionReset) => Some(RESET),
            Some(io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted) => Some(CLOSED),
            _ => None,
        });
        match closed {
            Some(how) if self.reply_bytes == 0 => CallEnd::ClosedBeforeReply(how),
            Some(_) => CallEnd::Other(LinkError::Closed(format!(
                "the device closed the connection in the middle of a reply ({} bytes in)",
                self.reply_bytes
            ))),
            None => CallEnd::Other(classify(e)),
        }
    }
}

const CLOSED: &str = "the device closed the connection before answering";
const RESET: &str = "the device reset the connection before answering";

/// The TCP socket under a tokio-modbus context, recording in [`WireEvents`] how the peer
/// ended the connection and how much of the reply arrived.
#[derive(Debug)]
struct WatchedStream {
    inner: TcpStream,
    watch: Arc<Mutex<WireEvents>>,
}

impl WatchedStream {
    /// A non-blocking look at the receive queue before a request goes out: a close that
    /// already arrived fails the write (the request would go into a dead connection), and
    /// stray bytes (a reply nobody waits for any more) are dropped so they cannot pass for
    /// the next answer.
    fn check_before_send(&self) -> io::Result<()> {
        let socket = socket2::SockRef::from(&self.inner);
        let mut scratch = [MaybeUninit::<u8>::uninit(); 256];
        loop {
            match socket.peek(&mut scratch[..1]) {
                Ok(0) => {
                    events(&self.watch).saw_close(CLOSED);
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                Ok(_) => {
                    // The socket is non-blocking, so this only drains what is queued.
                    let _ = socket.recv(&mut scratch);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    events(&self.watch).saw_close(RESET);
                    return Err(e);
                }
            }
        }
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let mut events = events(&self.watch);
        match &polled {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                if got == 0 && buf.remaining() > 0 {
                    events.saw_close(CLOSED);
                }
                events.reply_bytes += got;
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                events.saw_close(RESET);
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let check = std::mem::take(&mut events(&self.watch).check_before_send);
        if check {
            if let Err(e) = self.check_before_send() {
                return Poll::Ready(Err(e));
            }
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &written {
            match e.kind() {
                io::ErrorKind::BrokenPipe => events(&self.watch).saw_close(CLOSED),
                io::ErrorKind::ConnectionReset => events(&self.watch).saw_close(RESET),
                _ => {}
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn with_default_port(address: &str) -> String {
    let has_port = match address.rsplit_once(':') {
        // "[::1]:502" or "host:502"; a bare IPv6 literal "::1" has no port.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        address.to_string()
    } else if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:502")
    } else {
        format!("{address}:502")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Table;
    use crate::poll::modbus::plan::ReadRequest;
    use crate::poll::modbus::RawData;
    use crate::sim::{serve_tcp, Behaviour, SimDevice};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_modbus::ExceptionCode;

    fn read(start: u16) -> ReadRequest {
        ReadRequest {
            table: Table::Holding,
            start,
            count: 1,
            points: vec![],
        }
    }

    #[tokio::test]
    async fn an_exception_keeps_the_connection_and_a_timeout_drops_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dev = SimDevice::new(1);
        dev.with_banks(|b| b.set_holding(0, &[1]));
        let server = serve_tcp(listener, vec![dev.clone()]);
        let mut link = TcpLink::new(&addr.to_string(), Duration::from_millis(200));

        assert_eq!(
            link.read(1, &read(0)).await.unwrap(),
            Ok(RawData::Registers(vec![1]))
        );
        assert_eq!(
            link.read(1, &read(50)).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert!(link.wire.is_some(), "an exception must keep the connection");
        dev.set_behaviour(Behaviour::Exception(ExceptionCode::ServerDeviceBusy));
        assert_eq!(
            link.read(1, &read(0)).await.unwrap(),
            Err(ExceptionCode::ServerDeviceBusy)
        );
        assert!(link.wire.is_some());

        dev.set_behaviour(Behaviour::Silent);
        assert!(matches!(
            link.read(1, &read(0)).await,
            Err(LinkError::Timeout(_))
        ));
        assert!(
            link.wire.is_none(),
            "a timeout must drop the poisoned context"
        );

        dev.set_behaviour(Behaviour::Normal);
        assert_eq!(
            link.read(1, &read(0)).await.unwrap(),
            Ok(RawData::Registers(vec![1]))
        );
        server.abort();
    }

    /// A bare Modbus TCP peer that answers `answers` requests per connection with register
    /// value 7, then closes the connection (0: closes at once without reading).
    fn closing_peer(listener: TcpListener, answers: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                for _ in 0..answers {
                    let mut request = [0u8; 12];
                    if socket.read_exact(&mut request).await.is_err() {
                        break;
                    }
                    // Transaction id and protocol id echoed; length 5; unit; fc 3; 2 bytes; 7.
                    let reply = [request[0], request[1], 0, 0, 0, 5, request[6], 3, 2, 0, 7];
                    let _ = socket.write_all(&reply).await;
                }
            }
        })
    }

    #[tokio::test]
    async fn a_connection_the_device_closes_after_every_reply_is_reopened_before_each_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = closing_peer(listener, 1);
        let mut link = TcpLink::new(&addr.to_string(), Duration::from_millis(500));
        for _ in 0..5 {
            assert_eq!(
                link.read(1, &read(0)).await.unwrap(),
                Ok(RawData::Registers(vec![7]))
            );
            // Let the close arrive, as it does between two polls.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peer.abort();
    }

    #[tokio::test]
    async fn a_device_that_closes_every_connection_unanswered_fails_in_words_after_one_retry() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = closing_peer(listener, 0);
        let mut link = TcpLink::new(&addr.to_string(), Duration::from_millis(500));
        let error = link.read(1, &read(0)).await.unwrap_err();
        assert_eq!(error.kind(), "closed", "{error}");
        assert!(
            error.to_string().contains("closed the connection")
                || error.to_string().contains("reset the connection"),
            "{error}"
        );
        assert!(!error.to_string().contains("os error"), "{error}");
        peer.abort();
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_address_in_words() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut link = TcpLink::new(&address, Duration::from_millis(500));
        let error = link.read(1, &read(0)).await.unwrap_err();
        assert_eq!(error.kind(), "unreachable");
        assert!(
            error
                .to_string()
                .starts_with(&format!("connection refused by {address}")),
            "{error}"
        );
    }

    #[test]
    fn an_address_without_a_port_gets_502() {
        assert_eq!(with_default_port("plc.local"), "plc.local:502");
        assert_eq!(with_default_port("10.0.0.5:1502"), "10.0.0.5:1502");
        assert_eq!(with_default_port("::1"), "[::1]:502");
        assert_eq!(with_default_port("[::1]:5020"), "[::1]:5020");
    }
}
