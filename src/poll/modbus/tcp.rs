//! Modbus TCP transport: one connection, every call under a timeout, reconnect after any
//! outer error.
//!
//! Owns the TCP client context. After a timeout tokio-modbus' TCP context answers every later
//! call with `HeaderMismatch` (tokio-modbus #324), so any outer error drops the connection
//! and the next call reconnects. An exception keeps the connection.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::Slave;

use super::link::{check_response, classify, to_request, LinkError, ModbusLink, ReadResult};
use super::plan::ReadRequest;

pub struct TcpLink {
    address: String,
    timeout: Duration,
    ctx: Option<Context>,
}

impl TcpLink {
    /// `address` is `host:port`, or `host` alone for port 502.
    pub fn new(address: &str, timeout: Duration) -> Self {
        TcpLink {
            address: with_default_port(address),
            timeout,
            ctx: None,
        }
    }
}

/// Free of `&TcpLink` so the future stays `Send` (the context inside the link is not `Sync`).
async fn connect(address: String, limit: Duration) -> Result<Context, LinkError> {
    let unreachable = |what: String| {
        LinkError::Unreachable(format!(
                "cannot connect to Modbus TCP {address}: {what}; check the address and that the device or gateway is powered and reachable"
            ))
    };
    let stream = match timeout(limit, TcpStream::connect(address.as_str())).await {
        Err(_) => return Err(unreachable(format!("no answer within {limit:?}"))),
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Ok(Ok(s)) => s,
    };
    // Requests are tiny and latency-bound; Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    Ok(tokio_modbus::client::tcp::attach(stream))
}

impl ModbusLink for TcpLink {
    async fn read(&mut self, unit: u8, request: &ReadRequest) -> ReadResult {
        if self.ctx.is_none() {
            self.ctx = Some(connect(self.address.clone(), self.timeout).await?);
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(LinkError::Transport("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        let outcome = match timeout(self.timeout, ctx.call(to_request(request))).await {
            Err(_) => Err(LinkError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(classify(e)),
            Ok(Ok(Err(exception))) => return Ok(Err(exception)),
            Ok(Ok(Ok(response))) => check_response(request, response).map(Ok),
        };
        if outcome.is_err() {
            // The context is poisoned after a timeout (#324) and a stray reply could pair
            // with the next request: start over on a fresh connection.
            self.ctx = None;
        }
        outcome
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
    use crate::poll::modbus::RawData;
    use crate::sim::{serve_tcp, Behaviour, SimDevice};
    use tokio_modbus::ExceptionCode;

    #[tokio::test]
    async fn an_exception_keeps_the_connection_and_a_timeout_drops_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dev = SimDevice::new(1);
        dev.with_banks(|b| b.set_holding(0, &[1]));
        let server = serve_tcp(listener, vec![dev.clone()]);
        let mut link = TcpLink::new(&addr.to_string(), Duration::from_millis(200));
        let read = |start| ReadRequest {
            table: Table::Holding,
            start,
            count: 1,
            points: vec![],
        };

        assert_eq!(
            link.read(1, &read(0)).await.unwrap(),
            Ok(RawData::Registers(vec![1]))
        );
        assert_eq!(
            link.read(1, &read(50)).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert!(link.ctx.is_some(), "an exception must keep the connection");
        dev.set_behaviour(Behaviour::Exception(ExceptionCode::ServerDeviceBusy));
        assert_eq!(
            link.read(1, &read(0)).await.unwrap(),
            Err(ExceptionCode::ServerDeviceBusy)
        );
        assert!(link.ctx.is_some());

        dev.set_behaviour(Behaviour::Silent);
        assert!(matches!(
            link.read(1, &read(0)).await,
            Err(LinkError::Timeout(_))
        ));
        assert!(
            link.ctx.is_none(),
            "a timeout must drop the poisoned context"
        );

        dev.set_behaviour(Behaviour::Normal);
        assert_eq!(
            link.read(1, &read(0)).await.unwrap(),
            Ok(RawData::Registers(vec![1]))
        );
        server.abort();
    }

    #[test]
    fn an_address_without_a_port_gets_502() {
        assert_eq!(with_default_port("plc.local"), "plc.local:502");
        assert_eq!(with_default_port("10.0.0.5:1502"), "10.0.0.5:1502");
        assert_eq!(with_default_port("::1"), "[::1]:502");
        assert_eq!(with_default_port("[::1]:5020"), "[::1]:5020");
    }
}
