//! Simulated Modbus devices (tokio-modbus servers) for `fieldlink demo`, tests and benches.
pub struct SimDevice;
pub fn demo_devices() -> Vec<(u8, SimDevice)> {
    Vec::new()
}
pub async fn serve_tcp(listener: tokio::net::TcpListener, devices: Vec<(u8, SimDevice)>) {
    let _ = (listener, devices);
}
