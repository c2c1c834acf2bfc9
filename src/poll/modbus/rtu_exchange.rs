//! One Modbus RTU exchange over any byte stream: a serial port (`rtu`) or a TCP connection to
//! a serial device server (`rtu_tcp`). Owns what both share: the stream handle that survives
//! the client contexts built on it, the count of reply bytes that tells a garbled reply from
//! silence, the exchange under a timeout, and waiting out a line that went wrong.
//!
//! Why a context is rebuilt on the same stream after any error: tokio-modbus' RTU framing
//! stays broken after a decode error, and a late reply to a timed-out request would pass for
//! the answer to the next one (docs/design.md#tokio-modbus-017).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{timeout, Instant};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{Request, Response, Slave};

use super::link::{classify, ExceptionCode, LinkError};

/// A byte stream shared by the successive client contexts of one open port or connection
/// (a context owns its transport; we recreate contexts without reopening the stream).
/// Counts the bytes each exchange received and notes an end of stream.
pub(super) struct SharedStream<S> {
    stream: Arc<Mutex<S>>,
    received: Arc<AtomicUsize>,
    ended: Arc<AtomicBool>,
}

impl<S> Clone for SharedStream<S> {
    fn clone(&self) -> Self {
        SharedStream {
            stream: self.stream.clone(),
            received: self.received.clone(),
            ended: self.ended.clone(),
        }
    }
}

impl<S> SharedStream<S> {
    pub(super) fn new(stream: S) -> Self {
        SharedStream {
            stream: Arc::new(Mutex::new(stream)),
            received: Arc::new(AtomicUsize::new(0)),
            ended: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, S> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer ended the stream (a TCP close); a serial port never does.
    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SharedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.lock()).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        if matches!(polled, Poll::Ready(Ok(()))) && got == 0 && buf.remaining() > 0 {
            self.ended.store(true, Ordering::Relaxed);
        }
        self.received.fetch_add(got, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedStream<S> {
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

/// One request and its checked answer on `stream`, under `limit`. A timeout after some
/// bytes arrived is a garbled reply (`Protocol`), after none it is silence (`Timeout`). The
/// caller decides what an error does to the stream; `ctx` is dropped on any error.
pub(super) async fn exchange<S, T>(
    ctx: &mut Option<Context>,
    stream: &SharedStream<S>,
    unit: u8,
    request: Request<'static>,
    limit: Duration,
    check: &(impl Fn(Response) -> Result<T, LinkError> + Sync),
) -> Result<Result<T, ExceptionCode>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let context = ctx.get_or_insert_with(|| {
        tokio_modbus::client::rtu::attach_slave(stream.clone(), Slave(unit))
    });
    context.set_slave(Slave(unit));
    stream.received.store(0, Ordering::Relaxed);
    let answer = timeout(limit, context.call(request)).await;
    let outcome = match answer {
        Err(_) => match stream.received.load(Ordering::Relaxed) {
            0 => Err(LinkError::Timeout(limit)),
            bytes => Err(LinkError::Protocol(format!(
                "a garbled reply: {bytes} bytes that made no valid answer within {} (line \
                 noise, a wrong baud rate or parity, or two units with the same id?)",
                humantime::format_duration(limit)
            ))),
        },
        Ok(Err(e)) => Err(classify(e)),
        Ok(Ok(Err(exception))) => Ok(Err(exception)),
        Ok(Ok(Ok(response))) => check(response).map(Ok),
    };
    if outcome.is_err() {
        *ctx = None;
    }
    outcome
}

/// How many bytes the last exchange on `stream` received.
pub(super) fn received<S>(stream: &SharedStream<S>) -> usize {
    stream.received.load(Ordering::Relaxed)
}

/// Reads and discards until the line has been silent for `quiet` (bounded to four times
/// that, so a babbling line cannot hold the bus forever): a late reply must not pass for the
/// answer to the next request.
pub(super) async fn wait_out<S: AsyncRead + Unpin>(stream: &SharedStream<S>, quiet: Duration) {
    let give_up = Instant::now() + quiet * 4;
    let mut reader = stream.clone();
    let mut sink = [0u8; 256];
    while Instant::now() < give_up {
        match timeout(quiet, reader.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
}
