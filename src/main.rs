//! The `fieldlink` binary: parse the command line, run it, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use fieldlink::cli::{BufferAction, Cli, Command};
use fieldlink::{commands, signals};

fn main() -> ExitCode {
    // First, before any thread exists: a SIGHUP while `run` starts up must wait for the
    // agent's handler instead of killing it (see `signals`).
    signals::hold_sighup();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // One-shot commands keep the default: a hung-up terminal ends them.
        signals::release_sighup();
    }
    let outcome = match cli.command {
        Command::Run { config } => commands::run(&config),
        Command::Check { config } => commands::check(&config),
        Command::Read { config, device } => commands::read(&config, &device),
        Command::Write {
            config,
            device,
            point,
            value,
        } => commands::write(&config, &device, &point, &value),
        Command::Buffer {
            action: BufferAction::Stats { config },
        } => commands::buffer_stats(&config),
        Command::Demo { seconds } => commands::demo(seconds),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fieldlink: {err:#}");
            ExitCode::from(1)
        }
    }
}
