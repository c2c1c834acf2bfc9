//! The seam between the poller and one Modbus wire: one read at a time, errors classified.
//!
//! Owns the error vocabulary and the check that a response answers the request that was
//! sent (function and exact quantity). Knows nothing about scheduling or devices' state.
//!
//! Every error says what happened in words ("no reply within 300ms", "the device closed the
//! connection before answering", "connection refused by 10.0.0.5:502…"), never a bare errno:
//! these messages reach the log and `fieldlink read` as they are.

use std::future::Future;
use std::time::Duration;

use tokio_modbus::{Request, Response};

/// The device answered and refused: the inner error of every read, kept apart from a
/// broken wire ([`LinkError`]) all the way to availability and quality.
pub use tokio_modbus::ExceptionCode;

use crate::config::{Table, WriteFunction};
use crate::model::Quality;

use super::plan::ReadRequest;

/// The data of one answered read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawData {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// An outer error: the wire, not the device's logic, failed. Resets the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no reply within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Connecting or opening the port failed; the link retries it on its own schedule.
    #[error("{0}")]
    Unreachable(String),
    /// The device or gateway closed or reset the connection before answering, also after
    /// the link reopened it and asked again.
    #[error("{0}")]
    Closed(String),
    #[error("the connection failed: {0}")]
    Transport(String),
    /// A reply that does not answer the request (wrong unit, function or quantity, or a
    /// frame the codec rejected): likely a late reply to an earlier request or line noise.
    #[error("{0}")]
    Protocol(String),
}

impl LinkError {
    /// A short, stable name for logs and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Timeout(_) => "timeout",
            LinkError::Unreachable(_) => "unreachable",
            LinkError::Closed(_) => "closed",
            LinkError::Transport(_) => "transport",
            LinkError::Protocol(_) => "protocol",
        }
    }

    /// What a point read by the failed request is, when the device answers other reads
    /// (so the failure is this read's, not the device's).
    pub fn quality(&self) -> Quality {
        match self {
            LinkError::Timeout(_) => Quality::Timeout,
            LinkError::Protocol(_) => Quality::Garbled,
            LinkError::Unreachable(_) | LinkError::Closed(_) | LinkError::Transport(_) => {
                Quality::Disconnected
            }
        }
    }
}

/// What one read produced: outer error, or the device's answer (data or exception).
pub type ReadResult = Result<Result<RawData, ExceptionCode>, LinkError>;

/// One write: registers or coils from `start`, with the function the point asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    pub start: u16,
    pub data: WriteData,
    pub function: WriteFunction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    Registers(Vec<u16>),
    Coils(Vec<bool>),
}

/// What one write produced: outer error, or the device's answer (done, or an exception).
pub type WriteResult = Result<Result<(), ExceptionCode>, LinkError>;

/// One Modbus wire. Implementations wrap every call in a timeout and reset themselves after
/// an outer error, so the next call starts clean.
pub trait ModbusLink: Send {
    /// One request and its checked answer, under the transport's own rules for timeouts and
    /// for asking once more (each transport's module doc says which): the one method a
    /// transport writes; [`read`](Self::read) and [`write`](Self::write) are built on it.
    fn transact<T: Send>(
        &mut self,
        unit: u8,
        request: Request<'static>,
        check: impl Fn(Response) -> Result<T, LinkError> + Send + Sync,
    ) -> impl Future<Output = Result<Result<T, ExceptionCode>, LinkError>> + Send;

    fn read(&mut self, unit: u8, request: &ReadRequest) -> impl Future<Output = ReadResult> + Send {
        self.transact(unit, to_request(request), move |r| {
            check_response(request, r)
        })
    }

    /// A write, under the same rules as a read (timeout, reset after an outer error). A
    /// write sets registers or coils to values, so sending it again after the connection
    /// closed before any reply cannot do more than the first would have done.
    fn write(
        &mut self,
        unit: u8,
        request: &WriteRequest,
    ) -> impl Future<Output = WriteResult> + Send {
        self.transact(unit, to_write_request(request), move |r| {
            check_write_response(request, r)
        })
    }

    /// When the link cannot even try (e.g. the serial port is missing and its reopen is
    /// backed off), the instant it will try again; the poller waits instead of failing
    /// every device.
    fn not_before(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// How often the poller must call [`watch`](Self::watch) while it waits between
    /// requests; `None`: the link needs no watching.
    fn watch_period(&self) -> Option<Duration> {
        None
    }

    /// Looks after the wire between requests. `Some(error)` when the link found it gone
    /// (e.g. the serial device node disappeared or hung up) and dropped it: the poller marks
    /// every device offline and waits for [`not_before`](Self::not_before).
    fn watch(&mut self) -> Option<LinkError> {
        None
    }
}

pub(crate) fn to_request(r: &ReadRequest) -> Request<'static> {
    match r.table {
        Table::Coil => Request::ReadCoils(r.start, r.count),
        Table::Discrete => Request::ReadDiscreteInputs(r.start, r.count),
        Table::Input => Request::ReadInputRegisters(r.start, r.count),
        Table::Holding => Request::ReadHoldingRegisters(r.start, r.count),
    }
}

pub(crate) fn to_write_request(w: &WriteRequest) -> Request<'static> {
    match (&w.data, w.function) {
        (WriteData::Registers(words), WriteFunction::Single) if words.len() == 1 => {
            Request::WriteSingleRegister(w.start, words[0])
        }
        (WriteData::Coils(bits), WriteFunction::Single) if bits.len() == 1 => {
            Request::WriteSingleCoil(w.start, bits[0])
        }
        (WriteData::Registers(words), _) => {
            Request::WriteMultipleRegisters(w.start, words.clone().into())
        }
        (WriteData::Coils(bits), _) => Request::WriteMultipleCoils(w.start, bits.clone().into()),
    }
}

/// Checks that `response` is the device's echo of write `w`: single writes echo address and
/// value, multiple writes address and quantity.
pub(crate) fn check_write_response(w: &WriteRequest, response: Response) -> Result<(), LinkError> {
    let expected = match to_write_request(w) {
        Request::WriteSingleRegister(a, v) => Response::WriteSingleRegister(a, v),
        Request::WriteSingleCoil(a, v) => Response::WriteSingleCoil(a, v),
        Request::WriteMultipleRegisters(a, words) => {
            Response::WriteMultipleRegisters(a, words.len() as u16)
        }
        Request::WriteMultipleCoils(a, bits) => Response::WriteMultipleCoils(a, bits.len() as u16),
        other => unreachable!("not a write: {other:?}"),
    };
    if response == expected {
        Ok(())
    } else {
        Err(LinkError::Protocol(format!(
            "the reply does not confirm the write: expected {expected:?}, got {response:?}"
        )))
    }
}

/// Checks that `response` answers `r` with exactly the quantity asked. Bits arrive packed in
/// bytes, so a bit response is `ceil(count / 8) * 8` long and is truncated to `count`.
pub(crate) fn check_response(r: &ReadRequest, response: Response) -> Result<RawData, LinkError> {
    let count = usize::from(r.count);
    let mismatch = |got: usize| {
        LinkError::Protocol(format!(
            "the reply does not answer the request: asked {count} {} from {}, got {got}",
            if r.table.is_bits() {
                "bits"
            } else {
                "registers"
            },
            r.start
        ))
    };
    match (r.table, response) {
        (Table::Coil, Response::ReadCoils(mut bits))
        | (Table::Discrete, Response::ReadDiscreteInputs(mut bits)) => {
            if bits.len() != count.div_ceil(8) * 8 {
                return Err(mismatch(bits.len()));
            }
            bits.truncate(count);
            Ok(RawData::Bits(bits))
        }
        (Table::Input, Response::ReadInputRegisters(words))
        | (Table::Holding, Response::ReadHoldingRegisters(words)) => {
            if words.len() != count {
                return Err(mismatch(words.len()));
            }
            Ok(RawData::Registers(words))
        }
        (_, other) => Err(LinkError::Protocol(format!(
            "the reply does not answer the request: got {other:?} for a read of {:?}",
            r.table
        ))),
    }
}

/// Sorts tokio-modbus' outer error into ours.
pub(crate) fn classify(err: tokio_modbus::Error) -> LinkError {
    match err {
        tokio_modbus::Error::Protocol(p) => LinkError::Protocol(format!(
            "the reply does not answer the request ({p}): a late reply to an earlier request, or line noise"
        )),
        tokio_modbus::Error::Transport(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            LinkError::Protocol(format!(
                "a garbled reply ({io}): line noise, or a wrong baud rate or parity"
            ))
        }
        tokio_modbus::Error::Transport(io) => LinkError::Transport(io_words(&io)),
    }
}

/// An I/O error in words: the kind's own words where it has them, the message otherwise,
/// without the "(os error N)" that means nothing to a reader.
pub(crate) fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let text = match e.kind() {
        ConnectionRefused => "the connection was refused",
        ConnectionReset => "the connection was reset by the peer",
        ConnectionAborted => "the connection was aborted",
        BrokenPipe => "the peer had closed the connection",
        NotConnected => "not connected",
        UnexpectedEof => "the peer closed the connection in the middle of a reply",
        TimedOut => "the operating system timed the connection out",
        HostUnreachable => "no route to the host",
        NetworkUnreachable => "the network is unreachable",
        PermissionDenied => "permission denied",
        AddrNotAvailable => "the address is not available",
        _ => "",
    };
    if !text.is_empty() {
        return text.to_owned();
    }
    let message = e.to_string();
    match message.find(" (os error") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(table: Table, count: u16) -> ReadRequest {
        ReadRequest {
            table,
            start: 3,
            count,
            points: vec![],
        }
    }

    #[test]
    fn a_register_answer_of_another_length_is_refused() {
        let r = req(Table::Holding, 3);
        assert!(check_response(&r, Response::ReadHoldingRegisters(vec![1, 2])).is_err());
        assert_eq!(
            check_response(&r, Response::ReadHoldingRegisters(vec![1, 2, 3])).unwrap(),
            RawData::Registers(vec![1, 2, 3])
        );
    }

    #[test]
    fn an_answer_for_another_table_is_refused() {
        let r = req(Table::Input, 1);
        assert!(check_response(&r, Response::ReadHoldingRegisters(vec![1])).is_err());
    }

    #[test]
    fn errors_read_as_words_without_a_bare_errno() {
        assert_eq!(
            LinkError::Timeout(Duration::from_millis(300)).to_string(),
            "no reply within 300ms"
        );
        for raw in [0, 104, 110, 111, 113, 115] {
            let words = io_words(&std::io::Error::from_raw_os_error(raw));
            assert!(!words.contains("os error"), "{raw}: {words}");
            assert!(!words.is_empty(), "{raw}");
        }
        assert_eq!(
            io_words(&std::io::Error::from_raw_os_error(104)),
            "the connection was reset by the peer"
        );
    }

    #[test]
    fn bit_answers_are_checked_by_packed_bytes_and_truncated() {
        let r = req(Table::Coil, 10);
        let sixteen = vec![true; 16];
        assert_eq!(
            check_response(&r, Response::ReadCoils(sixteen)).unwrap(),
            RawData::Bits(vec![true; 10])
        );
        assert!(check_response(&r, Response::ReadCoils(vec![true; 8])).is_err());
        assert!(check_response(&r, Response::ReadCoils(vec![true; 24])).is_err());
    }
}
