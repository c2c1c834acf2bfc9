//! fieldlink: an edge IoT bridge agent. The binary in `main.rs` is a thin shell around this
//! library so that integration tests, benches and the demo drive the very same code.

pub mod app;
pub mod buffer;
pub mod cli;
pub mod commands;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod footprint;
pub mod health;
pub mod homeassistant;
pub mod logging;
pub mod model;
pub mod poll;
pub mod reload;
pub mod signals;
#[cfg(feature = "sim")]
pub mod sim;
pub mod supervisor;
pub mod systemd;
pub mod ticks;
pub mod uplink;
pub mod writes;
