//! What the health topic reports about the buffer.

use super::recover::Recovery;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `None` while the store works; else why readings are held in memory only.
    pub disk_error: Option<String>,
    pub memory_depth: usize,
    pub disk_depth: u64,
    pub dropped: u64,
    /// Set when the store was recovered from a damaged file at open.
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
