//! What every connection attempt shares: the settings read once from the config (servers,
//! TLS, topics, where commands go), what the uplink remembers across connections, and
//! rumqttc's options for one server. `mqtt` drives the connections.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use tokio::time::Instant;

use super::broker_check::Routing;
use super::delivery::MAX_PACKET;
use super::diagnose::{Cause, Target};
use super::password::read_password;
use super::quarantine::Quarantine;
use super::republish::RepublishSet;
use super::state::ComplaintPacer;
use super::topic;
use crate::config::{Mqtt, Server};
use crate::homeassistant::Discovery;
use crate::model::CommandSink;

/// rumqttc's own in-flight limit: above our window plus the birth, health and `offline`.
const RUMQTT_INFLIGHT: u16 = 600;

/// Everything a connection attempt needs that does not change between attempts.
pub(super) struct Settings {
    pub(super) cfg: Mqtt,
    /// Keep-alive rounded to whole seconds (MQTT carries seconds), at least 1 s.
    pub(super) keep_alive: Duration,
    pub(super) qos: QoS,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) status_topic: String,
    pub(super) health_topic: String,
    pub(super) command_filter: String,
    /// Where commands go; `None`: no point is writable, and we do not subscribe.
    pub(super) commands: Option<Arc<dyn CommandSink>>,
    /// `[mqtt] servers` (one when the config names one broker).
    pub(super) servers: Vec<Server>,
    /// Each server as `host:port`, for messages.
    pub(super) brokers: Vec<String>,
}

impl Settings {
    pub(super) fn target(&self, server: usize) -> Target<'_> {
        Target {
            broker: &self.brokers[server],
            host: &self.servers[server].host,
            client_id: &self.cfg.client_id,
        }
    }
}

/// One broker of the list, and the settings every attempt shares.
#[derive(Clone, Copy)]
pub(super) struct Dial<'a> {
    pub(super) settings: &'a Settings,
    /// Index into `settings.servers`.
    pub(super) server: usize,
}

/// What the uplink remembers across connections.
pub(super) struct Memory {
    pub(super) republish: RepublishSet,
    pub(super) quarantine: Quarantine,
    /// Failed attempts (refusals, TLS, unreachable broker).
    pub(super) failures: ComplaintPacer<Cause>,
    /// The broker not delivering our messages.
    pub(super) routing: ComplaintPacer<Routing>,
    /// The last connection was closed while the broker check waited for its SUBACK: the
    /// next one goes without the check (see `broker_check`).
    pub(super) skip_check: bool,
    /// The broker closed a connection over our subscription to commands: none is asked for
    /// until then.
    pub(super) commands_barred_until: Option<Instant>,
    /// Home Assistant discovery, when on (see `homeassistant`).
    pub(super) discovery: Option<Discovery>,
}

impl Settings {
    /// Reads the TLS files (the only part that can fail: a file the user must fix).
    pub(super) fn new(
        cfg: Mqtt,
        commands: Option<Arc<dyn CommandSink>>,
    ) -> anyhow::Result<Settings> {
        let tls = match &cfg.tls {
            Some(t) => Some(super::tls::client_config(t)?),
            None => None,
        };
        Ok(Settings {
            keep_alive: Duration::from_secs(cfg.keep_alive.as_secs_f64().round().max(1.0) as u64),
            qos: if cfg.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            status_topic: topic::gateway_status_topic(&cfg.prefix),
            health_topic: topic::health_topic(&cfg.prefix),
            command_filter: topic::command_filter(&cfg.prefix),
            commands,
            brokers: cfg.servers.iter().map(ToString::to_string).collect(),
            servers: cfg.servers.clone(),
            tls,
            cfg,
        })
    }

    /// rumqttc's options for a connection to server `server`.
    pub(super) fn mqtt_options(&self, server: usize) -> anyhow::Result<MqttOptions> {
        let cfg = &self.cfg;
        let Server { host, port } = &self.servers[server];
        let mut o = MqttOptions::new(cfg.client_id.clone(), host.clone(), *port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(true);
        o.set_inflight(RUMQTT_INFLIGHT);
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_last_will(LastWill::new(
            self.status_topic.clone(),
            topic::OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &cfg.username {
            let password = match &cfg.password_file {
                Some(path) => read_password(path)?,
                None => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        Ok(o)
    }
}

impl Memory {
    pub(super) fn new(discovery: Option<Discovery>) -> Memory {
        Memory {
            republish: RepublishSet::new(),
            quarantine: Quarantine::new(),
            failures: ComplaintPacer::new(),
            routing: ComplaintPacer::new(),
            skip_check: false,
            commands_barred_until: None,
            discovery,
        }
    }
}
