//! Command-line definitions (clap) only: no behaviour lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "fieldlink",
    version,
    about = "Edge IoT bridge: Modbus RTU/TCP devices to retained MQTT readings, with store-and-forward"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (what the systemd service starts).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a config; print its devices, points and the planned reads per bus.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Poll one device once and print raw registers and decoded values (commissioning).
    Read {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The device's name in the config.
        #[arg(long, short)]
        device: String,
    },
    /// Write one value to a writable point, read it back and print both (commissioning).
    /// The point needs `writable = true`; the value passes the same checks as a command
    /// from MQTT (min, max, what the register can hold).
    Write {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The device's name in the config.
        #[arg(long, short)]
        device: String,
        /// The point's name.
        #[arg(long, short)]
        point: String,
        /// The value in engineering units: 21.5, -3, true/false, ON/OFF, or "text".
        #[arg(allow_negative_numbers = true)]
        value: String,
    },
    /// Inspect the store-and-forward buffer (works while the agent runs).
    Buffer {
        #[command(subcommand)]
        action: BufferAction,
    },
    /// Run the agent end to end against an in-process simulated device and broker, printing
    /// every message that arrives upstream. Needs no outside service.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BufferAction {
    /// Depth, age of the oldest reading, bytes on disk and dropped count.
    Stats {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}
