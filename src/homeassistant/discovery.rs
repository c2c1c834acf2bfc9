//! What the uplink does about discovery, decided without I/O (time passed in): which topics
//! to subscribe to on a connection, what an incoming message on them means, and when to
//! put the configs back.
//!
//! - **Publishing.** The configs go into the outbox once at start (`app`), retained QoS 1
//!   like every other record, and from then on they are retained state the uplink owns: the
//!   republish set holds each one the broker acknowledged and puts them back after any
//!   CONNACK where the broker lost its retained messages (the same check as for the rest).
//!   A start always publishes them: the file may have changed, and a broker that kept the
//!   old ones still needs the new ones.
//! - **Home Assistant's birth.** `online` on `<discovery_prefix>/status` puts every config
//!   back [`BIRTH_SETTLE`] later (ahead of any backlog), once however many births arrive in
//!   that time. A retained `online` there is not a birth (a broker hands it to every new
//!   subscriber) and is ignored; `offline` needs nothing.
//! - **Points removed from the map.** On the first connection of a run the uplink also
//!   subscribes to this gateway's own discovery topics (`<discovery_prefix>/+/<gateway>/+/config`):
//!   the broker answers with what it holds there, and each config that is not ours any more
//!   gets an empty retained message, which deletes it (and the entity) in Home Assistant.
//!   Chosen over a record in the state directory: the broker is where the stale configs
//!   are, so asking it is exact (also after a lost or copied state directory, or a point
//!   that turned writable and moved from `sensor` to `number`), and it costs one download of
//!   the configs per run, not per connection. The subscription is dropped once the broker
//!   check's echo came back: mosquitto sends the retained messages of a subscription before
//!   anything published after it, so by then all of them arrived; one that came later is
//!   still cleared while the subscription lasts. A broker that did not route the echo gets
//!   the sweep again on the next connection.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::payload::DiscoveryConfig;

/// Home Assistant may announce `online` a moment before its discovery handler listens;
/// configs published at once would be retained but not seen until its next restart.
pub const BIRTH_SETTLE: Duration = Duration::from_secs(2);

/// The discovery state of one agent run.
#[derive(Debug)]
pub struct Discovery {
    configs: Vec<DiscoveryConfig>,
    owned: HashSet<String>,
    /// `<discovery_prefix>/status`.
    status_topic: String,
    /// `<discovery_prefix>/+/<gateway>/+/config`.
    sweep_filter: String,
    /// `<discovery_prefix>/` and `/<gateway>/`: what a topic of the sweep looks like.
    prefix_level: String,
    node_level: String,
    swept: bool,
    sweeping: bool,
    birth_due: Option<Instant>,
}

/// What a message on one of the discovery subscriptions asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Not ours to act on.
    Nothing,
    /// A config of this gateway that the map no longer has: publish an empty retained
    /// message on this topic.
    Clear(String),
}

impl Discovery {
    pub fn new(discovery_prefix: &str, gateway: &str, configs: Vec<DiscoveryConfig>) -> Self {
        Discovery {
            owned: configs.iter().map(|c| c.topic.clone()).collect(),
            configs,
            status_topic: format!("{discovery_prefix}/status"),
            sweep_filter: format!("{discovery_prefix}/+/{gateway}/+/config"),
            prefix_level: format!("{discovery_prefix}/"),
            node_level: format!("/{gateway}/"),
            swept: false,
            sweeping: false,
            birth_due: None,
        }
    }

    /// Every config, to queue at start.
    pub fn configs(&self) -> &[DiscoveryConfig] {
        &self.configs
    }

    /// Whether `topic` is one of our current configs (what a birth puts back).
    pub fn owns(&self, topic: &str) -> bool {
        self.owned.contains(topic)
    }

    /// The topics to subscribe to (QoS 0) on a fresh connection, before the birth.
    pub fn subscriptions(&mut self) -> Vec<String> {
        let mut topics = vec![self.status_topic.clone()];
        if !self.swept {
            self.sweeping = true;
            topics.push(self.sweep_filter.clone());
        }
        topics
    }

    /// The connection ended: a birth waiting to be acted on is moot (the configs go back
    /// with the retained state if the broker lost them), a sweep in progress starts again.
    pub fn connection_lost(&mut self) {
        self.birth_due = None;
        self.sweeping = false;
    }

    /// The broker check finished; `routed`: our own echo came back. Returns the sweep's
    /// filter to unsubscribe from, if it was subscribed.
    pub fn check_done(&mut self, routed: bool) -> Option<String> {
        if !std::mem::take(&mut self.sweeping) {
            return None;
        }
        self.swept |= routed;
        Some(self.sweep_filter.clone())
    }

    /// A message arrived on `topic`. Returns what to do; a birth is remembered and shows in
    /// [`birth_deadline`](Self::birth_deadline).
    pub fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        now: Instant,
    ) -> Incoming {
        if topic == self.status_topic {
            if !retain && payload == b"online" && self.birth_due.is_none() {
                self.birth_due = Some(now + BIRTH_SETTLE);
            }
            return Incoming::Nothing;
        }
        // An empty payload is a deletion (ours echoed, or someone's): nothing left to clear.
        if payload.is_empty() || !self.sweeping || self.owns(topic) || !self.is_ours(topic) {
            return Incoming::Nothing;
        }
        Incoming::Clear(topic.to_owned())
    }

    /// `<discovery_prefix>/<component>/<gateway>/<object id>/config`, for this gateway.
    fn is_ours(&self, topic: &str) -> bool {
        let Some(rest) = topic.strip_prefix(&self.prefix_level) else {
            return false;
        };
        let Some(rest) = rest.strip_suffix("/config") else {
            return false;
        };
        let mut levels = rest.split('/');
        let (Some(component), Some(node), Some(object), None) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return false;
        };
        !component.is_empty() && !object.is_empty() && format!("/{node}/") == self.node_level
    }

    /// When the configs are to be put back after a birth.
    pub fn birth_deadline(&self) -> Option<Instant> {
        self.birth_due
    }

    /// True once the settle time after a birth passed: put the configs back now.
    pub fn take_birth_due(&mut self, now: Instant) -> bool {
        match self.birth_due {
            Some(due) if now >= due => {
                self.birth_due = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery() -> Discovery {
        let config = |t: &str| DiscoveryConfig {
            topic: t.to_owned(),
            payload: b"{}".to_vec(),
        };
        Discovery::new(
            "ha",
            "gw1",
            vec![
                config("ha/sensor/gw1/m1_v/config"),
                config("ha/binary_sensor/gw1/status/config"),
            ],
        )
    }

    #[tokio::test(start_paused = true)]
    async fn configs_no_longer_in_the_map_are_cleared_while_the_sweep_lasts() {
        let mut d = discovery();
        let now = Instant::now();
        assert_eq!(
            d.subscriptions(),
            ["ha/status", "ha/+/gw1/+/config"],
            "the first connection sweeps"
        );
        let stale = "ha/number/gw1/m1_old/config";
        assert_eq!(
            d.on_message(stale, b"{}", true, now),
            Incoming::Clear(stale.into())
        );
        for (topic, payload) in [
            ("ha/sensor/gw1/m1_v/config", &b"{}"[..]),
            (stale, b""),
            ("ha/sensor/gw2/m1_old/config", b"{}"),
            ("ha/sensor/gw1/a/b/config", b"{}"),
        ] {
            assert_eq!(
                d.on_message(topic, payload, true, now),
                Incoming::Nothing,
                "{topic}"
            );
        }
        assert_eq!(d.check_done(true), Some("ha/+/gw1/+/config".into()));
        assert_eq!(d.on_message(stale, b"{}", true, now), Incoming::Nothing);
        assert_eq!(d.subscriptions(), ["ha/status"], "swept once per run");
        assert_eq!(d.check_done(true), None, "nothing to unsubscribe");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_whose_echo_never_came_is_made_again() {
        let mut d = discovery();
        d.subscriptions();
        assert!(d.check_done(false).is_some());
        assert_eq!(d.subscriptions().len(), 2);
        d.connection_lost();
        assert_eq!(d.subscriptions().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_birth_puts_the_configs_back_once_after_the_settle_time() {
        let mut d = discovery();
        let start = Instant::now();
        d.on_message("ha/status", b"online", true, start);
        assert_eq!(d.birth_deadline(), None, "a retained online is no birth");
        d.on_message("ha/status", b"offline", false, start);
        assert_eq!(d.birth_deadline(), None);
        d.on_message("ha/status", b"online", false, start);
        d.on_message(
            "ha/status",
            b"online",
            false,
            start + Duration::from_secs(1),
        );
        assert_eq!(d.birth_deadline(), Some(start + BIRTH_SETTLE));
        assert!(!d.take_birth_due(start + Duration::from_secs(1)));
        assert!(d.take_birth_due(start + BIRTH_SETTLE));
        assert!(!d.take_birth_due(start + BIRTH_SETTLE), "once");
    }
}
