//! What the uplink does about discovery, decided without I/O (time passed in): which topics
//! to subscribe to on a connection, what an incoming message on them means, and which
//! configs to publish.
//!
//! - **Publishing.** On the first connection of a run the uplink also subscribes to this
//!   gateway's own discovery topics (`<discovery_prefix>/+/<gateway>/+/config`), and the
//!   broker answers with the configs it holds there. When the broker check is over, every
//!   config the broker does not hold with exactly this payload is published; the others
//!   cost nothing (a restart with the same map sends no config). From then on they are
//!   retained state the uplink owns: the republish set holds them all and puts them back
//!   after any CONNACK where the broker lost its retained messages (the same check as for
//!   the rest). They go through the republish set, not the outbox: they are not readings
//!   (no `seq`, nothing to store on disk, the map regenerates them), and they must not wait
//!   behind a backlog of hours, which the republish set jumps.
//! - **Points removed from the map.** Each config found there that is not ours any more gets
//!   an empty retained message (through the outbox), which deletes it, and the entity, in
//!   Home Assistant. Chosen over a record in the state directory: the broker is where the
//!   stale configs are, so asking it is exact (also after a lost or copied state directory,
//!   or for a point that turned writable and moved from `sensor` to `number`), and it costs
//!   one download of the configs per run, not per connection.
//! - **When the sweep is complete.** The subscription is made just before the birth, and
//!   mosquitto sends a subscription's retained messages before anything published after
//!   it, so once the broker check's echo of the birth came back all of them arrived; the
//!   subscription is then dropped (one that comes later is still cleared while it lasts).
//!   A broker that did not route the echo gets every config, and the sweep again on the
//!   next connection.
//! - **Home Assistant's birth.** `online` on `<discovery_prefix>/status` puts every config
//!   back [`BIRTH_SETTLE`] later, once however many births arrive in that time. A retained
//!   `online` there is not a birth (a broker hands it to every new subscriber) and is
//!   ignored; `offline` needs nothing.

use std::collections::{HashMap, HashSet};
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
    /// The sweep's messages are being taken in (this connection subscribed to it).
    sweeping: bool,
    /// The sweep's subscription was made on this connection and not dropped yet.
    subscribed_sweep: bool,
    /// What the broker held on our own topics, as the sweep saw it.
    held: HashMap<String, Vec<u8>>,
    /// The configs were handed to the uplink this run.
    published: bool,
    birth_due: Option<Instant>,
}

/// What to do once the broker check of a connection is over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AfterCheck {
    /// The sweep's filter, to unsubscribe from.
    pub unsubscribe: Option<String>,
    /// Configs to publish (retained, ahead of any backlog).
    pub publish: Vec<DiscoveryConfig>,
    /// Configs the broker already holds as they are: owned, not sent.
    pub on_broker: Vec<DiscoveryConfig>,
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
            subscribed_sweep: false,
            held: HashMap::new(),
            published: false,
            birth_due: None,
        }
    }

    /// Every config.
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
        self.subscribed_sweep = false;
        if !self.swept {
            self.sweeping = true;
            self.subscribed_sweep = true;
            topics.push(self.sweep_filter.clone());
        }
        topics
    }

    /// The connection ended: a birth waiting to be acted on is moot (the configs go back
    /// with the retained state if the broker lost them), a sweep in progress starts again.
    pub fn connection_lost(&mut self) {
        self.birth_due = None;
        self.sweeping = false;
        self.held.clear();
    }

    /// The broker check finished; `routed`: our own echo came back, so the sweep saw
    /// everything the broker holds. The first time in a run, the configs go out.
    pub fn check_done(&mut self, routed: bool) -> AfterCheck {
        let mut after = AfterCheck::default();
        let swept_now = std::mem::take(&mut self.sweeping) && routed;
        if self.sweep_subscribed() {
            after.unsubscribe = Some(self.sweep_filter.clone());
            self.swept |= swept_now;
        }
        let held = std::mem::take(&mut self.held);
        if !self.published {
            self.published = true;
            for config in &self.configs {
                if swept_now && held.get(&config.topic) == Some(&config.payload) {
                    after.on_broker.push(config.clone());
                } else {
                    after.publish.push(config.clone());
                }
            }
        }
        after
    }

    /// True while the sweep's subscription stands (until [`check_done`](Self::check_done)).
    fn sweep_subscribed(&mut self) -> bool {
        std::mem::take(&mut self.subscribed_sweep)
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
        if payload.is_empty() || !self.sweeping {
            return Incoming::Nothing;
        }
        if self.owns(topic) {
            // Only what the broker kept; a live one is our own config echoed.
            if retain {
                self.held.insert(topic.to_owned(), payload.to_vec());
            }
            return Incoming::Nothing;
        }
        if !self.is_ours(topic) {
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
        let after = d.check_done(true);
        assert_eq!(after.unsubscribe.as_deref(), Some("ha/+/gw1/+/config"));
        assert_eq!(d.on_message(stale, b"{}", true, now), Incoming::Nothing);
        assert_eq!(d.subscriptions(), ["ha/status"], "swept once per run");
        assert_eq!(d.check_done(true), AfterCheck::default(), "all done");
    }

    #[tokio::test(start_paused = true)]
    async fn only_configs_the_broker_does_not_hold_as_they_are_go_out() {
        let mut d = discovery();
        let now = Instant::now();
        d.subscriptions();
        d.on_message("ha/sensor/gw1/m1_v/config", b"{}", true, now);
        d.on_message("ha/binary_sensor/gw1/status/config", b"{}", false, now);
        let after = d.check_done(true);
        let topics = |list: &[DiscoveryConfig]| -> Vec<String> {
            list.iter().map(|c| c.topic.clone()).collect()
        };
        assert_eq!(topics(&after.on_broker), ["ha/sensor/gw1/m1_v/config"]);
        assert_eq!(
            topics(&after.publish),
            ["ha/binary_sensor/gw1/status/config"],
            "a live copy is our own echo, not what the broker kept"
        );

        let mut d = discovery();
        d.subscriptions();
        d.on_message("ha/sensor/gw1/m1_v/config", b"{}", true, now);
        let after = d.check_done(false);
        assert_eq!(
            after.publish.len(),
            2,
            "no echo: what the broker holds is unknown"
        );
        assert!(after.unsubscribe.is_some());
        assert_eq!(d.subscriptions().len(), 2, "and the sweep is made again");
        assert!(
            d.check_done(true).publish.is_empty(),
            "published once per run"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_cut_short_by_a_lost_connection_is_made_again() {
        let mut d = discovery();
        d.subscriptions();
        d.connection_lost();
        assert_eq!(d.subscriptions().len(), 2);
        assert!(d.check_done(true).unsubscribe.is_some());
        assert_eq!(d.subscriptions().len(), 1);
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
