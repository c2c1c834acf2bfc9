//! The `[mqtt]` section and its `[mqtt.tls]` child: the broker, the session, payloads and
//! report by exception.

use std::path::PathBuf;

use toml::Spanned;
use toml_edit::Item;

use super::engine::{item_child, span_of, Checker, Decoded, FileId};
use super::shared::split_host_port;
use crate::config::limits;
use crate::config::raw::{RawMqtt, RawTls};
use crate::config::types::{Deadband, Gateway, Mqtt, PayloadMode, ReportByException, Server, Tls};
use crate::config::units::{format_duration, DeadbandText};

impl Checker {
    pub(super) fn mqtt(
        &mut self,
        file: FileId,
        item: &Item,
        gateway: Option<&Gateway>,
    ) -> Option<Mqtt> {
        let d = self.decode::<RawMqtt>(file, item, "[mqtt]", &["tls"])?;
        let raw = &d.value;
        let mut ok = true;

        let tls_item = item_child(item, "tls");
        let tls = match &tls_item {
            Some(child) => match self.tls(file, child) {
                Some(tls) => Some(tls),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };

        let (servers, secure) = match &raw.servers {
            Some(list) => self.server_list(file, raw, list, tls_item.is_some())?,
            None => {
                let (server, secure, port_ok) = self.one_server(file, &d, tls_item.is_some())?;
                ok &= port_ok;
                (vec![server], secure)
            }
        };
        let tls = if secure {
            Some(tls.unwrap_or_default())
        } else {
            None
        };
        let (host, port) = (servers[0].host.clone(), servers[0].port);

        let gateway_id = gateway.map(|g| g.id.as_str());
        let client_id = match &raw.client_id {
            Some(c) if c.get_ref().is_empty() => {
                self.fail(file, span_of(c), "`client_id` is empty: remove it to use \"fieldlink-<gateway id>\", or give a unique id");
                ok = false;
                String::new()
            }
            Some(c) => c.get_ref().clone(),
            None => format!("fieldlink-{}", gateway_id.unwrap_or("")),
        };

        let keep_alive = match &raw.keep_alive {
            None => Some(Mqtt::DEFAULT_KEEP_ALIVE),
            Some(ka) => {
                let value = ka.get_ref().0;
                if !limits::KEEP_ALIVE.contains(value) {
                    self.fail(file, span_of(ka), format!("`keep_alive` = \"{}\" is out of range: MQTT allows 1s to 65535s (18h 12m 15s); 15s to 60s suits cellular links", format_duration(value)));
                    None
                } else if value.subsec_nanos() != 0 {
                    self.fail(file, span_of(ka), format!("`keep_alive` = \"{}\" is not a whole number of seconds: MQTT counts keep-alive in seconds, e.g. \"15s\"", format_duration(value)));
                    None
                } else {
                    Some(value)
                }
            }
        };

        let qos = match &raw.qos {
            None => Some(Mqtt::DEFAULT_QOS),
            Some(q) => match *q.get_ref() {
                0 | 1 => Some(*q.get_ref() as u8),
                2 => {
                    self.fail(file, span_of(q), "`qos` = 2 is not supported: use 1 (at least once; readings carry a sequence number) or 0");
                    None
                }
                n => {
                    self.fail(file, span_of(q), format!("`qos` = {n} is not an MQTT QoS level: use 1 (at least once) or 0 (at most once)"));
                    None
                }
            },
        };

        let prefix = match &raw.prefix {
            None => Some(format!("fieldlink/{}", gateway_id.unwrap_or(""))),
            Some(p) => {
                let text = p.get_ref();
                let problem = if text.is_empty() {
                    Some("is empty")
                } else if text.contains(['+', '#']) {
                    Some("contains a wildcard (`+` or `#`), which is not allowed in a topic you publish to")
                } else if text.ends_with('/') {
                    Some("ends with `/`, which would make empty topic levels")
                } else if text.contains("//") {
                    Some("contains `//`, an empty topic level that subscribers rarely expect")
                } else if text.starts_with('$') {
                    Some("starts with `$`, which brokers reserve for their own topics")
                } else if text.contains('\0') {
                    Some("contains a NUL character")
                } else {
                    None
                };
                match problem {
                    Some(why) => {
                        self.fail(file, span_of(p), format!("`prefix` = \"{text}\" {why}: write something like \"fieldlink/site-7/gw-0001\" (no trailing slash)"));
                        None
                    }
                    None => Some(text.clone()),
                }
            }
        };

        let username = raw.username.as_ref().map(|u| u.get_ref().clone());
        if let Some(u) = &raw.username {
            if u.get_ref().is_empty() {
                self.fail(
                    file,
                    span_of(u),
                    "`username` is empty: remove it, or give the user name the broker expects",
                );
                ok = false;
            }
        }
        let password_file = raw
            .password_file
            .as_ref()
            .map(|p| PathBuf::from(p.get_ref()));
        if let Some(p) = &raw.password_file {
            if p.get_ref().is_empty() {
                self.fail(file, span_of(p), "`password_file` is empty: give the path of a file holding the password, or remove it");
                ok = false;
            } else if raw.username.is_none() && !d.reported.contains("username") {
                self.fail(file, span_of(p), "`password_file` is set without `username`: MQTT 3.1.1 sends a password only with a user name, so add username = \"...\"");
                ok = false;
            }
        }

        let connect_timeout = self.duration_or(
            file,
            &raw.connect_timeout,
            "connect_timeout",
            &limits::CONNECT_TIMEOUT,
            Mqtt::DEFAULT_CONNECT_TIMEOUT,
        );
        let health_interval = self.duration_or(
            file,
            &raw.health_interval,
            "health_interval",
            &limits::HEALTH_INTERVAL,
            Mqtt::DEFAULT_HEALTH_INTERVAL,
        );
        let command_max_age = self.duration_or(
            file,
            &raw.command_max_age,
            "command_max_age",
            &limits::COMMAND_MAX_AGE,
            Mqtt::DEFAULT_COMMAND_MAX_AGE,
        );
        let backoff_initial = self.duration_or(
            file,
            &raw.backoff_initial,
            "backoff_initial",
            &limits::BACKOFF_INITIAL,
            Mqtt::DEFAULT_BACKOFF_INITIAL,
        );
        let backoff_max = self.duration_or(
            file,
            &raw.backoff_max,
            "backoff_max",
            &limits::BACKOFF_MAX,
            Mqtt::DEFAULT_BACKOFF_MAX,
        );
        if let (Some(initial), Some(max), Some(raw_max)) =
            (backoff_initial, backoff_max, &raw.backoff_max)
        {
            if max < initial {
                self.fail(file, span_of(raw_max), format!("`backoff_max` (\"{}\") is shorter than `backoff_initial` (\"{}\"): make backoff_max at least as long", format_duration(max), format_duration(initial)));
                ok = false;
            }
        }
        let payload = match &raw.payload {
            None => Some(Mqtt::DEFAULT_PAYLOAD),
            Some(p) => self.choice(
                file,
                p,
                "payload",
                &[
                    ("json", PayloadMode::Json),
                    ("plain", PayloadMode::Plain),
                    ("device", PayloadMode::Device),
                    ("compact", PayloadMode::Compact),
                ],
            ),
        };
        let report = self.report_by_exception(file, raw);
        let queue_capacity = match &raw.queue_capacity {
            None => Some(Mqtt::DEFAULT_QUEUE_CAPACITY),
            Some(q) => self
                .int_in(
                    file,
                    q,
                    "queue_capacity",
                    1..=100_000_000,
                    "the number of readings held while the link is down must be {range}",
                )
                .map(|n| n as usize),
        };

        if !ok {
            return None;
        }
        Some(Mqtt {
            host,
            port,
            client_id,
            keep_alive: keep_alive?,
            qos: qos?,
            prefix: prefix?,
            username,
            password_file,
            tls,
            connect_timeout: connect_timeout?,
            backoff_initial: backoff_initial?,
            backoff_max: backoff_max?,
            payload: payload?,
            queue_capacity: queue_capacity?,
            report: report?,
            command_max_age: command_max_age?,
            health_interval: health_interval?,
            servers,
        })
    }

    /// The one broker of `url`, or of `host` and `port`: the server, whether it takes TLS,
    /// and whether the port was valid (a bad port is reported and the default used).
    fn one_server(
        &mut self,
        file: FileId,
        d: &Decoded<RawMqtt>,
        tls_present: bool,
    ) -> Option<(Server, bool, bool)> {
        let raw = &d.value;
        let mut ok = true;
        let (host, url_tls, url_port) = match (&raw.url, &raw.host) {
            (Some(_), Some(host)) => {
                self.fail(file, span_of(host), "[mqtt] has both `url` and `host`: keep one (url = \"mqtts://broker:8883\", or host = with port =)");
                return None;
            }
            (Some(url), None) => {
                if let Some(port) = &raw.port {
                    self.fail(file, span_of(port), "[mqtt] has both `url` and `port`: put the port in the url (\"mqtt://broker:1884\") and remove `port`");
                    ok = false;
                }
                match parse_broker_url(url.get_ref()) {
                    Ok((secure, host, port)) => {
                        if !secure && tls_present {
                            self.fail(file, span_of(url), "the url says mqtt:// (no TLS) but [mqtt.tls] is present: write mqtts:// or remove [mqtt.tls]");
                            ok = false;
                        }
                        (host, secure, port)
                    }
                    Err(message) => {
                        self.fail(file, span_of(url), message);
                        return None;
                    }
                }
            }
            (None, Some(host)) => {
                let h = host.get_ref().trim();
                if h.is_empty() || h.contains(['/', ' ', '@']) || h.contains("://") {
                    self.fail(file, span_of(host), format!("`host` = \"{}\" is not a host name or IP address: write e.g. host = \"broker.example.com\" (or use url = \"mqtts://...\")", host.get_ref()));
                    return None;
                }
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    false,
                    None,
                )
            }
            (None, None) => {
                if !d.reported.contains("url") && !d.reported.contains("host") {
                    self.fail(file, Some(d.start..d.start), "[mqtt] names no broker: add url = \"mqtt://localhost:1883\" (or host = \"...\" and port = ..., or servers = [\"mqtt://b1:1883\", \"mqtt://b2:1883\"] for a cluster)");
                }
                return None;
            }
        };
        let secure = url_tls || tls_present;
        let default_port = if secure {
            Mqtt::DEFAULT_TLS_PORT
        } else {
            Mqtt::DEFAULT_PORT
        };
        let port = match (url_port, &raw.port) {
            (Some(p), _) => p,
            (None, Some(p)) if raw.url.is_none() => {
                match self.int_in(file, p, "port", 1..=65535, "a TCP port is {range}") {
                    Some(p) => p as u16,
                    None => {
                        ok = false;
                        default_port
                    }
                }
            }
            _ => default_port,
        };

        Some((Server { host, port }, secure, ok))
    }

    /// `servers = ["mqtts://b1:8883", ...]`: every entry a broker url, all with TLS or none,
    /// none twice, and no `url`, `host` or `port` beside them.
    fn server_list(
        &mut self,
        file: FileId,
        raw: &RawMqtt,
        list: &Spanned<Vec<Spanned<String>>>,
        tls_present: bool,
    ) -> Option<(Vec<Server>, bool)> {
        for (key, span) in [
            ("url", raw.url.as_ref().map(span_of)),
            ("host", raw.host.as_ref().map(span_of)),
            ("port", raw.port.as_ref().map(span_of)),
        ] {
            if let Some(span) = span {
                self.fail(file, span, format!("[mqtt] has both `servers` and `{key}`: list every broker in servers = [\"mqtt://b1:1883\", \"mqtt://b2:1883\"] and remove `{key}`"));
                return None;
            }
        }
        if list.get_ref().is_empty() {
            self.fail(file, span_of(list), "`servers` is empty: list at least one broker, e.g. servers = [\"mqtts://b1.example:8883\", \"mqtts://b2.example:8883\"]");
            return None;
        }
        let mut servers: Vec<Server> = Vec::new();
        let mut schemes = Vec::new();
        let mut ok = true;
        for entry in list.get_ref() {
            match parse_broker_url(entry.get_ref()) {
                Ok((secure, host, port)) => {
                    let default = if secure || tls_present {
                        Mqtt::DEFAULT_TLS_PORT
                    } else {
                        Mqtt::DEFAULT_PORT
                    };
                    let server = Server {
                        host,
                        port: port.unwrap_or(default),
                    };
                    if servers.contains(&server) {
                        self.fail(
                            file,
                            span_of(entry),
                            format!("`servers` names {server} twice: list each broker once"),
                        );
                        ok = false;
                    }
                    servers.push(server);
                    schemes.push((secure, span_of(entry)));
                }
                Err(message) => {
                    self.fail(file, span_of(entry), message);
                    ok = false;
                }
            }
        }
        let secure = schemes.first().is_some_and(|(s, _)| *s);
        if let Some((_, span)) = schemes.iter().find(|(s, _)| *s != secure) {
            self.fail(file, span.clone(), "`servers` mixes mqtt:// and mqtts://: a gateway's link is encrypted or not, whichever broker it reaches; use one scheme for all");
            ok = false;
        }
        if !secure && tls_present && ok {
            self.fail(file, span_of(list), "`servers` say mqtt:// (no TLS) but [mqtt.tls] is present: write mqtts:// or remove [mqtt.tls]");
            ok = false;
        }
        ok.then_some((servers, secure || tls_present))
    }

    /// `deadband` and `max_interval` of `[mqtt]`: `Some(None)` when report by exception is off.
    fn report_by_exception(
        &mut self,
        file: FileId,
        raw: &RawMqtt,
    ) -> Option<Option<ReportByException>> {
        let mut ok = true;
        let deadband = raw.deadband.as_ref().and_then(|d| {
            let (value, deadband) = match *d.get_ref() {
                DeadbandText::Absolute(v) => (v, Deadband::Absolute(v)),
                DeadbandText::Percent(v) => (v, Deadband::Percent(v)),
            };
            if value.is_finite() && value >= 0.0 {
                return Some(deadband);
            }
            self.fail(file, span_of(d), format!("`deadband` = {value} must be a finite number >= 0: e.g. deadband = 0.5 (absolute) or deadband = \"2%\"; 0 publishes on any change"));
            ok = false;
            None
        });
        let max_interval = match &raw.max_interval {
            None => ReportByException::DEFAULT_MAX_INTERVAL,
            Some(m) => {
                let value = m.get_ref().0;
                if raw.deadband.is_none() {
                    self.fail(file, span_of(m), "`max_interval` only applies with a `deadband`: add deadband = 0.5 (or \"2%\"), or remove max_interval (every reading is published then)");
                    ok = false;
                } else if self
                    .duration_in(file, m, "max_interval", &limits::MAX_INTERVAL)
                    .is_none()
                {
                    ok = false;
                }
                value
            }
        };
        ok.then(|| {
            deadband.map(|deadband| ReportByException {
                deadband,
                max_interval,
            })
        })
    }

    fn tls(&mut self, file: FileId, item: &Item) -> Option<Tls> {
        let d = self.decode::<RawTls>(file, item, "[mqtt.tls]", &[])?;
        let raw = &d.value;
        let mut ok = true;
        let mut path =
            |checker: &mut Self, v: &Option<Spanned<String>>, key: &str| -> Option<PathBuf> {
                let v = v.as_ref()?;
                if v.get_ref().trim().is_empty() {
                    checker.fail(
                        file,
                        span_of(v),
                        format!("`{key}` is empty: give a PEM file path, or remove the key"),
                    );
                    ok = false;
                    return None;
                }
                Some(PathBuf::from(v.get_ref()))
            };
        let ca_file = path(self, &raw.ca_file, "ca_file");
        let client_cert = path(self, &raw.client_cert, "client_cert");
        let client_key = path(self, &raw.client_key, "client_key");
        match (&raw.client_cert, &raw.client_key) {
            (Some(cert), None) if !d.reported.contains("client_key") => {
                self.fail(file, span_of(cert), "`client_cert` is set without `client_key`: mutual TLS needs both, so add client_key = \"/path/key.pem\" or remove client_cert");
                ok = false;
            }
            (None, Some(key)) if !d.reported.contains("client_cert") => {
                self.fail(file, span_of(key), "`client_key` is set without `client_cert`: mutual TLS needs both, so add client_cert = \"/path/cert.pem\" or remove client_key");
                ok = false;
            }
            _ => {}
        }
        if !ok {
            return None;
        }
        Some(Tls {
            ca_file,
            client_cert,
            client_key,
        })
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` -> (TLS?, host, port).
fn parse_broker_url(url: &str) -> Result<(bool, String, Option<u16>), String> {
    let advice = "write url = \"mqtt://host:1883\" or \"mqtts://host:8883\"";
    let (secure, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!(
            "broker url \"{url}\" must start with mqtt:// or mqtts://: {advice}"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(format!("broker url \"{url}\" carries credentials: put the user in `username` and the password in a file named by `password_file`"));
    }
    if rest.contains('/') {
        return Err(format!(
            "broker url \"{url}\" has a path, which MQTT does not use: {advice}"
        ));
    }
    let (host, port) =
        split_host_port(rest).map_err(|why| format!("broker url \"{url}\" {why}: {advice}"))?;
    Ok((secure, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_give_tls_host_and_port() {
        assert_eq!(
            parse_broker_url("mqtts://b.example:8883"),
            Ok((true, "b.example".into(), Some(8883)))
        );
        assert_eq!(
            parse_broker_url("mqtt://localhost"),
            Ok((false, "localhost".into(), None))
        );
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://u:p@x").is_err());
    }
}
