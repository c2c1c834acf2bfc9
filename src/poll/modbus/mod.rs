//! Modbus: pure planning and decoding, the RTU/TCP transports, the poll loop and the
//! commissioning read.
//!
//! `plan` and `codec` (decoding reads, encoding writes) are pure; `reads` is the exception-2 fallback, also pure. `link` is
//! the seam between the poller and a wire: one request at a time, with the outer error (the
//! wire broke or stayed silent) kept apart from the inner [`ExceptionCode`] (the device
//! answered and refused). `tcp`, `rtu` and `rtu_tcp` (RTU frames over TCP to a serial
//! device server) are the transports, with `rtu_exchange` the RTU exchange both RTU links
//! share; they are the only importers of tokio-modbus client code. `write` is a write and its
//! read-back. `scheduler` is the poll loop of one wire (availability, backoff, quality); `bus`
//! runs one loop per RTU line or per TCP device; `commission` is `fieldlink read`.

pub mod bus;
pub mod codec;
pub mod commission;
pub mod link;
pub mod plan;
pub mod reads;
pub mod rtu;
mod rtu_exchange;
pub mod rtu_tcp;
pub mod scheduler;
pub mod tcp;
#[cfg(test)]
mod tests;
pub mod write;

pub use link::{ExceptionCode, LinkError, ModbusLink, RawData};
pub use plan::{describe_plan, plan, plan_groups, PlanGroup, ReadRequest};
