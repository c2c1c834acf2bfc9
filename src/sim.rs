//! Simulated Modbus devices (tokio-modbus servers) for `fieldlink demo`, tests and benches.
