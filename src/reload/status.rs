//! The `reload` section of the health topic: how the last reload went. Absent until the first
//! SIGHUP. A failed reload is a trouble (the health message goes out early), so a fleet
//! operator who pushed a broken file learns it from the health topic, not only the journal.

use std::sync::{Arc, Mutex};

use crate::health::{Health, Section};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Unix ms when the reload was asked for.
    pub ts_ms: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the settings that wait for a restart, if any.
    Ok { needs_restart: Vec<&'static str> },
    /// The file was refused: the old config keeps running.
    Failed { errors: usize, first: String },
}

/// Shared between the reload and the health report.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus(Arc<Mutex<Option<Attempt>>>);

impl ReloadStatus {
    /// Registers the `reload` section with `health`.
    pub fn report_to(&self, health: &Health) {
        let status = self.clone();
        health.add_report_source("reload", move || status.section());
    }

    pub fn set(&self, attempt: Attempt) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(attempt);
    }

    fn section(&self) -> Option<Section> {
        let attempt = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(section(&attempt))
    }
}

fn section(attempt: &Attempt) -> Section {
    match &attempt.outcome {
        Outcome::Ok { needs_restart } => Section {
            value: serde_json::json!({
                "ts": attempt.ts_ms,
                "status": "ok",
                "errors": 0,
                "first_error": null,
                "needs_restart": needs_restart,
            }),
            trouble: None,
        },
        Outcome::Failed { errors, first } => Section {
            value: serde_json::json!({
                "ts": attempt.ts_ms,
                "status": "failed",
                "errors": errors,
                "first_error": first,
                "needs_restart": [],
            }),
            trouble: Some(format!(
                "configuration reload failed ({errors} error(s), first: {first}); the previous \
                 configuration keeps running"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_section_before_the_first_reload_and_a_failed_one_is_a_trouble() {
        let health = Health::new();
        let status = ReloadStatus::default();
        status.report_to(&health);
        assert!(health.report().sections.is_empty());

        status.set(Attempt {
            ts_ms: 5,
            outcome: Outcome::Failed {
                errors: 2,
                first: "/etc/fieldlink/fieldlink.toml:3:1: unknown key".into(),
            },
        });
        let report = health.report();
        let (key, section) = &report.sections[0];
        assert_eq!(key, "reload");
        assert_eq!(section.value["status"], "failed");
        assert_eq!(section.value["errors"], 2);
        assert_eq!(report.troubles().len(), 1);

        status.set(Attempt {
            ts_ms: 6,
            outcome: Outcome::Ok {
                needs_restart: vec!["[buffer]"],
            },
        });
        let report = health.report();
        assert_eq!(report.sections[0].1.value["status"], "ok");
        assert_eq!(report.sections[0].1.value["needs_restart"][0], "[buffer]");
        assert!(report.troubles().is_empty(), "a good reload clears it");
    }
}
