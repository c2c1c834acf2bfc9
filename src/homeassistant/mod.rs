//! Home Assistant MQTT discovery (`[homeassistant] enabled = true`): one retained config per
//! point, so Home Assistant shows every device and point without YAML.
//!
//! `payload` builds the configs from the checked config (pure); `discovery` is the
//! bookkeeping the uplink consults: subscriptions, Home Assistant's birth, configs to clear
//! (sans-IO). The uplink publishes them as retained state it owns, through its republish
//! set, and clears stale ones through the outbox (`uplink::homeassistant` is its side).
//! Must not touch the buses or rumqttc.

mod discovery;
mod payload;

pub use discovery::{AfterCheck, Discovery, Incoming, BIRTH_SETTLE};
pub use payload::{discovery_configs, slug, DiscoveryConfig};

use crate::config::Config;

/// The discovery state of a run, or `None` when discovery is off.
pub fn for_config(config: &Config) -> Option<Discovery> {
    let ha = &config.homeassistant;
    ha.enabled.then(|| {
        Discovery::new(
            &ha.discovery_prefix,
            &config.gateway.id,
            discovery_configs(config),
        )
    })
}
