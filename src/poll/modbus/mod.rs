//! Modbus: pure planning and decoding, and the RTU/TCP transports.
pub mod decode;
pub mod plan;
