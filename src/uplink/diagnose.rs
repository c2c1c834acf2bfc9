//! Connection failures in words: what happened, and what the user should check.
//!
//! Owns the translation of rumqttc's and rustls' errors, and of our own verdicts on a
//! connection, into a [`Diagnosis`]: a typed [`Cause`] and a sentence for the log and the
//! health topic. The cause is what a repeat is recognised by (the same trouble gives the same
//! cause, so it is logged once, see `state::ComplaintPacer`); its severity (the broker or TLS
//! refusing us is the user's to fix: warn; a broker that cannot be reached yet is
//! information) and whether the broker closed the connection (which may blame the record
//! just sent, see `quarantine`) follow from it. No I/O; it never decides what to do about a
//! failure (`session_end` does).

use std::io::ErrorKind;
use std::time::{Duration, SystemTime};

use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
use rustls::{AlertDescription, CertificateError};

use super::quarantine::Ending;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The broker or the TLS layer refuses us: a setting to fix, on one side or the other.
    Warn,
    /// The broker is unreachable, slow, or the link broke: it may come back by itself.
    Info,
}

/// Why a connection attempt failed or a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `mqtt.password_file` could not be read.
    PasswordFile,
    /// No connection to the broker's address (refused, no route, ...).
    Unreachable(ErrorKind),
    /// rumqttc's connect timed out (TCP or TLS).
    ConnectTimeout,
    /// Connected, but no CONNACK within `mqtt.connect_timeout`.
    NoConnack,
    /// The broker answered our CONNECT with something else than a CONNACK.
    NotConnack,
    /// The broker refused us in its CONNACK.
    Refused(Refusal),
    Tls(TlsTrouble),
    /// The broker closed the connection without answering our CONNECT.
    ClosedBeforeConnack,
    /// The broker accepted us, then closed the connection over our retained birth.
    ClosedBeforeBirth,
    /// The broker closed the connection cleanly (EOF).
    Closed,
    /// The connection broke: reset, a failed write.
    Broken(ErrorKind),
    /// A write to the broker did not finish in time.
    WriteTimeout,
    /// Another error of the MQTT client.
    Mqtt,
    /// Nothing received from the broker for 1.5 x keep-alive (our verdict, see `state`).
    KeepAlive,
    /// The MQTT client would not take a message from us.
    ClientRefused,
    /// The MQTT client's events stopped matching what we asked for (see `delivery`).
    Mismatch,
    /// The MQTT event loop stopped.
    EventLoopStopped,
}

/// The broker's reason in a refusing CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    Unavailable,
    ProtocolVersion,
    /// A refusal that said success (a broken broker).
    Success,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsTrouble {
    /// The TLS layer could not be set up (rumqttc's TLS error, not a handshake's).
    Setup,
    /// The broker ended the handshake with this alert.
    Alert(AlertDescription),
    /// We rejected the broker's certificate.
    Certificate(CertTrouble),
    Other,
}

/// What is wrong with the broker's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertTrouble {
    UnknownIssuer,
    NotValidForName,
    Expired,
    NotValidYet,
    Revoked,
    BadSignature,
    InvalidPurpose,
    Other,
}

impl Cause {
    pub fn severity(self) -> Severity {
        match self {
            Cause::PasswordFile
            | Cause::NotConnack
            | Cause::Refused(_)
            | Cause::Tls(_)
            | Cause::ClosedBeforeConnack
            | Cause::ClosedBeforeBirth => Severity::Warn,
            Cause::Unreachable(_)
            | Cause::ConnectTimeout
            | Cause::NoConnack
            | Cause::Closed
            | Cause::Broken(_)
            | Cause::WriteTimeout
            | Cause::Mqtt
            | Cause::KeepAlive
            | Cause::ClientRefused
            | Cause::Mismatch
            | Cause::EventLoopStopped => Severity::Info,
        }
    }

    /// Whether the broker closed the connection (which may blame what was just sent).
    pub fn ending(self) -> Ending {
        match self {
            Cause::Closed | Cause::Broken(_) | Cause::ClosedBeforeBirth => Ending::ClosedByBroker,
            _ => Ending::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub cause: Cause,
    /// What happened and what to check, in words.
    pub text: String,
}

impl Diagnosis {
    fn new(cause: Cause, text: String) -> Self {
        Diagnosis { cause, text }
    }

    pub fn severity(&self) -> Severity {
        self.cause.severity()
    }

    pub fn ending(&self) -> Ending {
        self.cause.ending()
    }
}

/// What the diagnosis needs to know about the connection besides the error.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `host:port`.
    pub broker: &'a str,
    pub host: &'a str,
    pub client_id: &'a str,
}

pub fn connection_error(e: &ConnectionError, to: Target<'_>) -> Diagnosis {
    let broker = to.broker;
    if let Some(tls) = find_rustls_error(e) {
        return tls_error(tls, to);
    }
    match e {
        ConnectionError::ConnectionRefused(code) => refused(*code, to),
        ConnectionError::Io(io) => {
            let text = match io.kind() {
                ErrorKind::ConnectionRefused => format!(
                    "nothing accepts connections at {broker} (connection refused): check that \
                     the broker runs and that mqtt.host and mqtt.port are right"
                ),
                _ => format!("cannot reach broker {broker}: {io}"),
            };
            Diagnosis::new(Cause::Unreachable(io.kind()), text)
        }
        ConnectionError::Tls(tls) => Diagnosis::new(
            Cause::Tls(TlsTrouble::Setup),
            format!("TLS with {broker} failed: {tls}"),
        ),
        ConnectionError::MqttState(StateError::ConnectionAborted) => Diagnosis::new(
            Cause::Closed,
            format!("broker {broker} closed the connection"),
        ),
        ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => {
            let text = match io.kind() {
                ErrorKind::ConnectionReset => format!("broker {broker} reset the connection"),
                ErrorKind::BrokenPipe => {
                    format!("broker {broker} closed the connection while we were writing")
                }
                _ => format!("the connection to {broker} failed: {io}"),
            };
            Diagnosis::new(Cause::Broken(io.kind()), text)
        }
        ConnectionError::NetworkTimeout => Diagnosis::new(
            Cause::ConnectTimeout,
            format!("no answer from {broker} in time (mqtt.connect_timeout)"),
        ),
        ConnectionError::FlushTimeout => Diagnosis::new(
            Cause::WriteTimeout,
            format!("writing to {broker} timed out"),
        ),
        other => Diagnosis::new(Cause::Mqtt, format!("MQTT error with {broker}: {other}")),
    }
}

/// `mqtt.password_file` could not be read (`error` says which file and why).
pub fn password_file(error: &anyhow::Error) -> Diagnosis {
    Diagnosis::new(Cause::PasswordFile, format!("{error:#}"))
}

/// The broker answered our CONNECT with `answer` instead of a CONNACK.
pub fn not_connack(answer: &rumqttc::Event, to: Target<'_>) -> Diagnosis {
    Diagnosis::new(
        Cause::NotConnack,
        format!(
            "broker {} answered the connect with {answer:?} instead of CONNACK",
            to.broker
        ),
    )
}

pub fn no_connack(waited: Duration, to: Target<'_>) -> Diagnosis {
    Diagnosis::new(
        Cause::NoConnack,
        format!(
            "no CONNACK from {} within {waited:?} (mqtt.connect_timeout)",
            to.broker
        ),
    )
}

/// Our keep-alive verdict: nothing arrived from the broker for `allowance`.
pub fn keep_alive(allowance: Duration) -> Diagnosis {
    Diagnosis::new(
        Cause::KeepAlive,
        format!(
            "nothing received from the broker for {:.1}s (1.5 x keep-alive)",
            allowance.as_secs_f64()
        ),
    )
}

pub fn client_refused(e: &super::event_loop::DriverGone) -> Diagnosis {
    Diagnosis::new(
        Cause::ClientRefused,
        format!("cannot hand a message to the MQTT client: {e}"),
    )
}

/// The client's write events stopped matching our requests (see `delivery`).
pub fn mismatch(what: super::delivery::Mismatch) -> Diagnosis {
    use super::delivery::Mismatch;
    let text = match what {
        Mismatch::Unrequested { pkid } => {
            format!("rumqttc wrote a publish we did not request (packet id {pkid})")
        }
        Mismatch::PacketIdInUse { pkid } => format!(
            "rumqttc wrote packet id {pkid} while a publish with that id still waited for its \
             PUBACK"
        ),
    };
    Diagnosis::new(
        Cause::Mismatch,
        format!("{text}; reconnecting, every unacknowledged message is sent again"),
    )
}

pub fn event_loop_stopped() -> Diagnosis {
    Diagnosis::new(
        Cause::EventLoopStopped,
        "the MQTT event loop stopped".into(),
    )
}

/// The broker closed the connection without answering our CONNECT.
pub fn closed_before_connack(to: Target<'_>) -> Diagnosis {
    Diagnosis::new(
        Cause::ClosedBeforeConnack,
        format!(
            "broker {} closed the connection without answering our CONNECT: it may refuse \
             our retained last will (mosquitto: retain_available false), be at its \
             connection limit, or expect TLS on this port (mqtt.tls); the broker's log says \
             which",
            to.broker
        ),
    )
}

/// The connection was accepted, then closed before the broker acknowledged our birth.
pub fn closed_before_birth(after: Duration, to: Target<'_>) -> Diagnosis {
    Diagnosis::new(
        Cause::ClosedBeforeBirth,
        format!(
            "broker {} accepted the connection, then closed it {:.1}s later before \
             acknowledging our retained `online` status: it may refuse retained messages \
             (mosquitto: retain_available false), refuse our subscription to our own status \
             topic, or another client may be connecting with client_id \"{}\" (mqtt.client_id \
             must be unique); the broker's log says which",
            to.broker,
            after.as_secs_f64(),
            to.client_id
        ),
    )
}

fn refused(code: ConnectReturnCode, to: Target<'_>) -> Diagnosis {
    let broker = to.broker;
    let (refusal, why) = match code {
        ConnectReturnCode::BadUserNamePassword => (
            Refusal::BadCredentials,
            "bad user name or password: check mqtt.username and the password in \
             mqtt.password_file (it is read again at every attempt)"
                .to_string(),
        ),
        ConnectReturnCode::NotAuthorized => (
            Refusal::NotAuthorized,
            "not authorized: the broker does not let this client in; check mqtt.username, \
             mqtt.password_file, mqtt.tls.client_cert and the broker's allow_anonymous and \
             ACL settings"
                .to_string(),
        ),
        ConnectReturnCode::BadClientId => (
            Refusal::BadClientId,
            format!(
                "client id \"{}\" rejected: set mqtt.client_id to one the broker accepts \
                 (unique; strict brokers allow at most 23 letters and digits)",
                to.client_id
            ),
        ),
        ConnectReturnCode::ServiceUnavailable => (
            Refusal::Unavailable,
            "server unavailable: the broker is up but not taking clients yet".to_string(),
        ),
        ConnectReturnCode::RefusedProtocolVersion => (
            Refusal::ProtocolVersion,
            "it does not accept MQTT 3.1.1 (unacceptable protocol version)".to_string(),
        ),
        ConnectReturnCode::Success => (Refusal::Success, "although it said success".to_string()),
    };
    Diagnosis::new(
        Cause::Refused(refusal),
        format!("broker {broker} refused the connection: {why}"),
    )
}

fn tls_error(e: &rustls::Error, to: Target<'_>) -> Diagnosis {
    let broker = to.broker;
    let (trouble, why) = match e {
        rustls::Error::InvalidCertificate(cert) => {
            let (trouble, why) = server_certificate(cert, to);
            (TlsTrouble::Certificate(trouble), why)
        }
        rustls::Error::AlertReceived(alert) => {
            let ours = matches!(
                alert,
                AlertDescription::BadCertificate
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::CertificateRevoked
                    | AlertDescription::CertificateExpired
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateRequired
                    | AlertDescription::AccessDenied
            );
            let why = if ours {
                format!(
                    "the broker did not accept our client certificate (TLS alert {alert:?}): \
                     check that mqtt.tls.client_cert is issued by a CA the broker trusts, is \
                     not expired, and matches mqtt.tls.client_key; a broker that requires a \
                     certificate needs both set"
                )
            } else {
                format!("the broker ended the TLS handshake (alert {alert:?})")
            };
            (TlsTrouble::Alert(*alert), why)
        }
        other => (
            TlsTrouble::Other,
            format!("the TLS handshake failed: {other}"),
        ),
    };
    Diagnosis::new(
        Cause::Tls(trouble),
        format!("TLS with {broker} failed: {why}"),
    )
}

fn server_certificate(cert: &CertificateError, to: Target<'_>) -> (CertTrouble, String) {
    let date = |t: &rustls::pki_types::UnixTime| {
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs()))
            .to_string()
    };
    match cert {
        CertificateError::UnknownIssuer => (
            CertTrouble::UnknownIssuer,
            "the broker's certificate is not signed by a CA we trust: set mqtt.tls.ca_file to \
             the CA that issued it (or add that CA to the system's store)"
                .to_string(),
        ),
        CertificateError::NotValidForName => (
            CertTrouble::NotValidForName,
            format!(
                "the broker's certificate is not valid for \"{}\" (mqtt.host): connect by a \
                 name the certificate lists, or re-issue it with this name",
                to.host
            ),
        ),
        CertificateError::NotValidForNameContext { presented, .. } => (
            CertTrouble::NotValidForName,
            format!(
                "the broker's certificate is not valid for \"{}\" (mqtt.host); it names {}: \
                 connect by one of those, or re-issue it with this name",
                to.host,
                if presented.is_empty() {
                    "nothing usable".to_string()
                } else {
                    presented
                        .iter()
                        .map(|p| bare_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ),
        CertificateError::Expired => (
            CertTrouble::Expired,
            "the broker's certificate has expired: renew it on the broker (or, if this \
             gateway's clock is wrong, fix the clock: NTP)"
                .to_string(),
        ),
        CertificateError::ExpiredContext { time, not_after } => (
            CertTrouble::Expired,
            format!(
                "the broker's certificate expired at {} (our clock says {}): renew it on the \
                 broker, or fix this gateway's clock if that is what is wrong",
                date(not_after),
                date(time)
            ),
        ),
        CertificateError::NotValidYet => (
            CertTrouble::NotValidYet,
            "the broker's certificate is not valid yet: check this gateway's clock (no RTC, \
             NTP not synced?)"
                .to_string(),
        ),
        CertificateError::NotValidYetContext { time, not_before } => (
            CertTrouble::NotValidYet,
            format!(
                "the broker's certificate is valid only from {} and our clock says {}: check \
                 this gateway's clock (no RTC, NTP not synced?)",
                date(not_before),
                date(time)
            ),
        ),
        CertificateError::Revoked => (
            CertTrouble::Revoked,
            "the broker's certificate is revoked".to_string(),
        ),
        CertificateError::BadSignature => (
            CertTrouble::BadSignature,
            "the broker's certificate has a bad signature (a damaged certificate, or not the \
             CA it claims)"
                .to_string(),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
            CertTrouble::InvalidPurpose,
            "the broker's certificate is not meant for a TLS server (extended key usage)"
                .to_string(),
        ),
        other => (
            CertTrouble::Other,
            format!("the broker's certificate was rejected: {other:?}"),
        ),
    }
}

/// `other.example` from rustls' `DnsName("other.example")` (and the like for addresses).
fn bare_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, inner)| inner.strip_suffix(')'))
        .map(|inner| inner.trim_matches('"'))
        .unwrap_or(presented)
}

/// The rustls error inside a rumqttc error, wherever it sits: rumqttc wraps handshake errors
/// in its TLS error, tokio-rustls puts them in an `io::Error`, and an alert after the
/// handshake (a TLS 1.3 broker rejecting our certificate) comes back from the first read.
fn find_rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(rumqttc::TlsError::TLS(tls)) = err.downcast_ref::<rumqttc::TlsError>() {
            return Some(tls);
        }
        // io::Error's `source()` skips the error it wraps: look at that one first.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return Some(tls);
                }
                current = Some(inner);
                continue;
            }
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO: Target<'static> = Target {
        broker: "broker.example:8883",
        host: "broker.example",
        client_id: "fieldlink-gw1",
    };

    fn wrapped_in_io(e: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    }

    #[test]
    fn a_refusal_names_the_broker_reason_and_the_settings_to_check() {
        let d = connection_error(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            TO,
        );
        assert_eq!(d.severity(), Severity::Warn);
        assert!(
            d.text.contains("broker.example:8883")
                && d.text.contains("bad user name or password")
                && d.text.contains("mqtt.password_file"),
            "{}",
            d.text
        );
        let other = connection_error(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            TO,
        );
        assert_ne!(d.cause, other.cause);
        assert!(other.text.contains("not authorized"), "{}", other.text);
    }

    #[test]
    fn tls_failures_are_found_wherever_rumqttc_and_tokio_rustls_wrapped_them() {
        let unknown = connection_error(
            &wrapped_in_io(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            TO,
        );
        assert_eq!(unknown.severity(), Severity::Warn);
        assert!(
            unknown.text.contains("mqtt.tls.ca_file"),
            "{}",
            unknown.text
        );

        let alert = ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(AlertDescription::CertificateExpired),
            ),
        )));
        let d = connection_error(&alert, TO);
        assert!(
            d.text.contains("client certificate") && d.text.contains("CertificateExpired"),
            "{}",
            d.text
        );
        assert_eq!(d.ending(), Ending::Other, "a refusal blames no record");
    }

    #[test]
    fn a_name_mismatch_says_which_name_we_used() {
        let d = connection_error(
            &wrapped_in_io(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
            TO,
        );
        assert!(
            d.text.contains("\"broker.example\"") && d.text.contains("mqtt.host"),
            "{}",
            d.text
        );
    }

    #[test]
    fn names_a_certificate_presents_are_shown_bare() {
        assert_eq!(bare_name("DnsName(\"other.example\")"), "other.example");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("plain.example"), "plain.example");
    }

    #[test]
    fn a_closed_connection_may_blame_a_record_and_a_timeout_never_does() {
        let closed = connection_error(
            &ConnectionError::MqttState(StateError::ConnectionAborted),
            TO,
        );
        assert_eq!(closed.ending(), Ending::ClosedByBroker);
        let reset = connection_error(
            &ConnectionError::MqttState(StateError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
            TO,
        );
        assert_eq!(reset.ending(), Ending::ClosedByBroker);
        assert!(reset.text.contains("reset"), "{}", reset.text);
        let timeout = connection_error(&ConnectionError::FlushTimeout, TO);
        assert_eq!(timeout.ending(), Ending::Other);
    }
}
