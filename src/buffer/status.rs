//! What the health topic reports about the buffer.
//!
//! A field that is null or zero is left out of the section (the health topic's rule, see
//! the README): an idle healthy gateway's heartbeat then carries only `boot` here, which
//! keeps the retained heartbeat small on a metered link; absent means null or 0.

use super::recover::Recovery;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `None` while the store works; else why readings are held in memory only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_error: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub memory_depth: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub disk_depth: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped: u64,
    /// Set when the store was recovered from a damaged file at open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// The agent's boot epoch (`boot` in reading payloads).
    pub boot: u64,
}

impl Status {
    /// The `buffer` section of the health topic: these fields as JSON; the disk error is a
    /// trouble, so the topic tells at once that readings are held in memory only.
    pub fn health_section(&self) -> crate::health::Section {
        crate::health::Section {
            value: serde_json::to_value(self).unwrap_or_default(),
            trouble: self.disk_error.clone(),
        }
    }
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_idle_buffer_reports_only_its_boot() {
        let status = Status {
            disk_error: None,
            memory_depth: 0,
            disk_depth: 0,
            dropped: 0,
            recovery: None,
            boot: 7,
        };
        assert_eq!(
            status.health_section().value,
            serde_json::json!({"boot": 7})
        );
        let busy = Status {
            disk_error: Some("read-only file system".into()),
            memory_depth: 3,
            disk_depth: 2,
            dropped: 1,
            ..status
        };
        assert_eq!(
            busy.health_section().value,
            serde_json::json!({"disk_error": "read-only file system", "memory_depth": 3,
                               "disk_depth": 2, "dropped": 1, "boot": 7})
        );
    }
}
