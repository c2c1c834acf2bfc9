//! Health: progress beats from every long-running loop, and the counters the health topic
//! and systemd's STATUS line report.
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
}

#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    beats: Mutex<Vec<std::sync::Weak<BeatSlot>>>,
    link: Mutex<LinkReport>,
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
            }),
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
}
