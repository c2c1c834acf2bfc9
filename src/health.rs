//! Health: progress beats from every long-running loop, and the counters the health topic
//! and systemd's STATUS line report.
//!
//! The health topic's content beyond the link comes from report sources ([`Section`]s) that
//! other modules register with [`Health::add_report_source`] (the durable buffer, the
//! serial_line counters); the uplink reads one [`HealthReport`] and never depends on them.
//!
//! A loop proves it is alive by calling [`Beat::tick`] each time it makes progress (a poll
//! cycle finished, an event from the broker handled, a timer of its own fired). The watchdog
//! (see `systemd`) pings only while every registered beat is fresh, so a wedged task stops
//! the pings instead of being hidden by a free-running timer. Owns no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct BeatSlot {
    name: String,
    max_silence: Duration,
    /// Milliseconds since `Health::epoch` of the last tick.
    last_ms: AtomicU64,
}

/// A handle a loop ticks to say it is making progress. Dropping it unregisters the loop.
#[derive(Debug)]
pub struct Beat {
    slot: Arc<BeatSlot>,
    epoch: Instant,
}

impl Beat {
    pub fn tick(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.slot.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// State of the MQTT link as the health topic reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Up,
    Down,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkReport {
    pub state: LinkState,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Whether the broker delivers what we publish (checked after every connect):
    /// [`ROUTING_OK`], [`ROUTING_UNCHECKED`], or what is wrong, in words.
    pub routing: String,
    /// Records given up because the broker would not take them (also in the dropped count).
    pub quarantined: u64,
    /// The last of them: topic, size and why, in words.
    pub last_quarantined: Option<String>,
    /// The broker (`host:port`) of the current or last connection.
    pub server: Option<String>,
}

pub const ROUTING_OK: &str = "ok";
pub const ROUTING_UNCHECKED: &str = "unchecked";

impl LinkReport {
    /// The routing problem, if the check found one.
    pub fn routing_trouble(&self) -> Option<&str> {
        (self.routing != ROUTING_OK && self.routing != ROUTING_UNCHECKED)
            .then_some(self.routing.as_str())
    }
}

/// One part of the health topic, from a module the uplink must not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// What the health topic carries under the source's key.
    pub value: serde_json::Value,
    /// A condition the operator must hear about early (e.g. the buffer's disk error): when
    /// it appears, changes or clears, the health topic goes out before its next heartbeat.
    pub trouble: Option<String>,
}

/// What the health topic reports: the link, then each registered source's section in the
/// order they were registered (sources that had nothing to say are left out).
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub link: LinkReport,
    pub sections: Vec<(String, Section)>,
}

impl HealthReport {
    /// `(source, trouble)` of every section that reports one, after the link's own
    /// (a broker that does not deliver our messages).
    pub fn troubles(&self) -> Vec<(String, String)> {
        let link = self
            .link
            .routing_trouble()
            .map(|t| ("link".to_string(), t.to_string()));
        link.into_iter()
            .chain(
                self.sections
                    .iter()
                    .filter_map(|(key, s)| s.trouble.clone().map(|t| (key.clone(), t))),
            )
            .collect()
    }
}

type SourceFn = dyn Fn() -> Option<Section> + Send + Sync;

struct ReportSource {
    key: String,
    section: Arc<SourceFn>,
}

impl std::fmt::Debug for ReportSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportSource")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    beats: Mutex<Vec<std::sync::Weak<BeatSlot>>>,
    link: Mutex<LinkReport>,
    sources: Mutex<Vec<ReportSource>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            beats: Mutex::new(Vec::new()),
            link: Mutex::new(LinkReport {
                state: LinkState::Connecting,
                last_error: None,
                reconnects: 0,
                routing: ROUTING_UNCHECKED.to_string(),
                quarantined: 0,
                last_quarantined: None,
                server: None,
            }),
            sources: Mutex::new(Vec::new()),
        }
    }
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Registers a loop that must tick at least every `max_silence`.
    pub fn register(&self, name: impl Into<String>, max_silence: Duration) -> Beat {
        let slot = Arc::new(BeatSlot {
            name: name.into(),
            max_silence,
            last_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
        });
        self.beats.lock().unwrap().push(Arc::downgrade(&slot));
        Beat {
            slot,
            epoch: self.epoch,
        }
    }

    /// Names of the loops that have not ticked within their allowance.
    pub fn stalled(&self) -> Vec<String> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let mut beats = self.beats.lock().unwrap();
        beats.retain(|w| w.strong_count() > 0);
        beats
            .iter()
            .filter_map(|w| w.upgrade())
            .filter(|s| {
                now_ms.saturating_sub(s.last_ms.load(Ordering::Relaxed))
                    > s.max_silence.as_millis() as u64
            })
            .map(|s| s.name.clone())
            .collect()
    }

    pub fn link(&self) -> LinkReport {
        self.link.lock().unwrap().clone()
    }

    /// Updates the link report; returns true when the state changed.
    pub fn set_link(&self, f: impl FnOnce(&mut LinkReport)) -> bool {
        let mut link = self.link.lock().unwrap();
        let before = link.state;
        f(&mut link);
        link.state != before
    }

    /// Adds a section to the health topic under `key`, asked for whenever a report is made
    /// (about once a second while the link is up): keep it cheap and non-blocking. `None`
    /// leaves the key out. A second source with the same key replaces the first.
    pub fn add_report_source(
        &self,
        key: impl Into<String>,
        section: impl Fn() -> Option<Section> + Send + Sync + 'static,
    ) {
        let key = key.into();
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|s| s.key != key);
        sources.push(ReportSource {
            key,
            section: Arc::new(section),
        });
    }

    /// The link and every source's section, as of now.
    pub fn report(&self) -> HealthReport {
        // Sources are called outside the lock: one may take locks of its own.
        let sources: Vec<(String, Arc<SourceFn>)> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| (s.key.clone(), s.section.clone()))
            .collect();
        HealthReport {
            link: self.link(),
            sections: sources
                .into_iter()
                .filter_map(|(key, section)| section().map(|s| (key, s)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_ticking_is_reported_stalled() {
        let health = Health::new();
        let beat = health.register("bus rtu0", Duration::from_secs(5));
        let other = health.register("uplink", Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        beat.tick();
        other.tick();
        assert!(health.stalled().is_empty());
        tokio::time::advance(Duration::from_secs(4)).await;
        other.tick();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(health.stalled(), vec!["bus rtu0".to_string()]);
        drop(beat);
        assert!(health.stalled().is_empty());
    }

    #[test]
    fn a_report_carries_each_source_that_has_something_to_say_in_registration_order() {
        let health = Health::new();
        health.add_report_source("buffer", || {
            Some(Section {
                value: serde_json::json!({"disk_error": "read-only"}),
                trouble: Some("read-only".into()),
            })
        });
        health.add_report_source("quiet", || None);
        health.add_report_source("serial_line", || {
            Some(Section {
                value: serde_json::json!({}),
                trouble: None,
            })
        });
        let report = health.report();
        let keys: Vec<&str> = report.sections.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["buffer", "serial_line"]);
        assert_eq!(
            report.troubles(),
            vec![("buffer".to_string(), "read-only".to_string())]
        );
        health.add_report_source("buffer", || None);
        assert!(health.report().troubles().is_empty(), "replaced");
    }
}
