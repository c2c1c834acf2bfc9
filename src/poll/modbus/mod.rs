//! Modbus: pure planning and decoding, and the RTU/TCP transports.
//!
//! `plan` and `decode` are pure. `link` is the seam between the poller and a wire: one
//! request at a time, with the outer error (the wire broke or stayed silent) kept apart from
//! the inner [`ExceptionCode`] (the device answered and refused). `tcp` and `rtu` are the
//! only importers of tokio-modbus client code.

pub mod decode;
pub mod link;
pub mod plan;
pub mod reads;
pub mod rtu;
pub mod tcp;

pub use link::{LinkError, ModbusLink, RawData};
pub use plan::{describe_plan, plan, plan_groups, PlanGroup, ReadRequest};
pub use tokio_modbus::ExceptionCode;
