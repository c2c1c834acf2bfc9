//! Shared test harness: real peers on ports the kernel picks, and waits with deadlines.
//!
//! Each test binary does `mod support;` and uses what it needs, hence the `dead_code` allow.
#![allow(dead_code)]

pub mod bin;
pub mod broker;
#[allow(unused_imports)] // not every suite starts a broker
pub use broker::Broker;
pub mod agent;
pub mod expect;
pub mod modbus;
pub mod mount;
pub mod nats;
pub mod proxy;
pub mod pty;
pub mod tls;
pub mod watch;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it returns `Some`, or panics after `deadline` with `what`.
/// The only way tests here wait: on an observable event, with a bound.
pub async fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking twin of [`wait_until`] for code outside a runtime.
pub fn wait_until_blocking<T>(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago (for peers such as mosquitto that cannot report the
/// port they bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A name no other test (or earlier run against a long-lived broker) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
