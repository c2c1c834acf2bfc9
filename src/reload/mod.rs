//! Configuration reload on SIGHUP: what changed between the running config and the file
//! (`plan`, pure), how the last attempt went on the health topic (`status`), and the words
//! the journal gets (here). Carrying a plan out is the supervisor's business; this module
//! starts and stops nothing.

pub mod plan;
pub mod status;

use crate::config::{Config, ConfigErrors};

pub use plan::{Plan, UplinkChange};
pub use status::{Attempt, Outcome, ReloadStatus};

/// Reads and checks the config file again, off the async runtime (a file on a slow SD card
/// must not stall the buses). Only a regular file is read: opening a FIFO (or a device)
/// could block for ever, and a blocked read would keep the agent from ever stopping.
pub async fn read(path: std::path::PathBuf) -> Result<Config, ConfigErrors> {
    let unreadable = |path: &std::path::Path, message: String| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message,
        }])
    };
    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_file() => {
            return Err(unreadable(
                &path,
                "not a regular file: a reload reads the configuration only from a regular \
                 file"
                    .into(),
            ))
        }
        // load() says what is wrong with a path it cannot open.
        _ => {}
    }
    let shown = path.clone();
    match tokio::task::spawn_blocking(move || crate::config::load(&path)).await {
        Ok(result) => result,
        Err(e) => Err(unreadable(&shown, format!("reading failed: {e}"))),
    }
}

/// Logs every error the way `fieldlink check` prints them, one line each, and says what
/// keeps running; returns the attempt for the health topic.
pub fn refused(errors: &ConfigErrors, asked_at_ms: u64) -> Attempt {
    let lines: Vec<String> = errors
        .0
        .iter()
        .map(|e| {
            ConfigErrors(vec![e.clone()])
                .to_string()
                .trim_end()
                .to_string()
        })
        .collect();
    for line in &lines {
        tracing::error!(error_kind = "reload", "{line}");
    }
    tracing::error!(
        errors = lines.len(),
        "configuration reload refused: {} problem(s) in the file; the running configuration \
         stays in effect (fix the file, check it with `fieldlink check`, then reload again)",
        lines.len()
    );
    Attempt {
        ts_ms: asked_at_ms,
        outcome: Outcome::Failed {
            errors: lines.len(),
            first: lines.first().cloned().unwrap_or_default(),
        },
    }
}

/// One info line saying what the reload restarts and what it leaves running.
pub fn log_plan(plan: &Plan) {
    if plan.is_empty() {
        tracing::info!("configuration reloaded: nothing changed that a reload applies");
    } else {
        let uplink = if plan.uplink.is_empty() {
            "kept (the link stays up)".to_string()
        } else {
            let why: Vec<String> = plan.uplink.iter().map(|c| c.to_string()).collect();
            format!("restarted ({})", why.join(", "))
        };
        tracing::info!(
            buses_stopped = ?plan.stop,
            buses_started = ?plan.start,
            devices_added = ?plan.added_devices,
            devices_removed = ?plan.removed_devices,
            devices_changed = ?plan.changed_devices,
            commands_updated = plan.commands,
            "configuration reloaded: uplink {uplink}"
        );
    }
    if !plan.needs_restart.is_empty() {
        tracing::warn!(
            settings = ?plan.needs_restart,
            "changed settings a reload does not apply (the buffer is never reopened while the \
             agent runs); they take effect at the next start (systemctl restart fieldlink)"
        );
    }
}

/// The attempt of a reload that was applied.
pub fn applied(plan: &Plan, asked_at_ms: u64) -> Attempt {
    Attempt {
        ts_ms: asked_at_ms,
        outcome: Outcome::Ok {
            needs_restart: plan.needs_restart.clone(),
        },
    }
}
