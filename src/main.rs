//! The `fieldlink` binary: parse the command line, run it, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use fieldlink::cli::{BufferAction, Cli, Command};
use fieldlink::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run { config } => commands::run(&config),
        Command::Check { config } => commands::check(&config),
        Command::Read { config, device } => commands::read(&config, &device),
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
