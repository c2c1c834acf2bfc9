//! The uplink over TLS against a real mosquitto that requires client certificates, with
//! certificates made by `openssl` at test time (see `support::tls`): mutual TLS with a
//! password, X.509 v1 client certificates, and handshake failures told in words.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::time::Duration;

use support::agent::{self, ConfigDir};
use support::tls::{ClientCert, ServerCert, TlsBroker, TlsLab};
use support::watch::Watch;
use support::{unique, wait_until};
use uplink_agent::{mqtt, Agent};

const KA: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(15);

/// The agent's `[mqtt]` for the listener presenting `server`, trusting `ca`, presenting
/// `client`, with the password in `password_file` (a file of the lab).
fn tls_mqtt(
    lab: &TlsLab,
    broker: &TlsBroker,
    server: ServerCert,
    ca: &str,
    client: ClientCert,
    password_file: &str,
) -> fieldlink::config::Mqtt {
    let mut cfg = mqtt(broker.port(server), &unique("fl/tls"), KA);
    cfg.host = "localhost".into();
    cfg.servers[0].host = "localhost".into();
    cfg.username = Some("gw1".into());
    cfg.password_file = Some(lab.path(password_file));
    let (cert, key) = lab.client(client);
    cfg.tls = Some(fieldlink::config::Tls {
        ca_file: Some(lab.path(ca)),
        client_cert: Some(cert),
        client_key: Some(key),
    });
    cfg
}

async fn readings_flow(lab: &TlsLab, broker: &TlsBroker, client: ClientCert) {
    let cfg = tls_mqtt(lab, broker, ServerCert::Good, "ca.pem", client, "password");
    let prefix = cfg.prefix.clone();
    let watch = Watch::start(broker.plain_port, &format!("{prefix}/#")).await;
    let agent = Agent::start(cfg);
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;
    agent.reading("v", 1.0);
    let m = watch
        .wait_for(&format!("{prefix}/dev/v"), DEADLINE, |_| true)
        .await;
    assert_eq!(m.json()["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_go_over_mutual_tls_with_a_password_read_from_a_file() {
    let lab = TlsLab::new();
    let broker = TlsBroker::start(&lab);
    readings_flow(&lab, &broker, ClientCert::V3).await;
}

/// Regression: a v1 client certificate stopped the agent at start with "the client key does
/// not match the certificate ... UnsupportedCertVersion", although mosquitto accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_certificate_that_mosquitto_accepts_is_presented_and_readings_flow() {
    let lab = TlsLab::new();
    let (v1, _) = lab.client(ClientCert::V1);
    assert_eq!(
        lab.version_of(&v1),
        "Version: 1 (0x0)",
        "the lab made a v1 cert"
    );
    let broker = TlsBroker::start(&lab);
    readings_flow(&lab, &broker, ClientCert::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_certificate_with_another_certificates_key_is_refused_at_start_naming_both_files(
) {
    let lab = TlsLab::new();
    let broker = TlsBroker::start(&lab);
    let agent = Agent::start(tls_mqtt(
        &lab,
        &broker,
        ServerCert::Good,
        "ca.pem",
        ClientCert::V1WithWrongKey,
        "password",
    ));
    wait_until("the uplink refused to start", DEADLINE, || {
        agent.task.is_finished().then_some(())
    })
    .await;
    let error = format!("{:#}", (&mut { agent }.task).await.unwrap().unwrap_err());
    assert!(
        error.contains("does not belong to the certificate")
            && error.contains("client.key")
            && error.contains("client-v1.pem"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_with_the_settings_to_check() {
    let lab = TlsLab::new();
    let broker = TlsBroker::start(&lab);
    let agent = Agent::start(tls_mqtt(
        &lab,
        &broker,
        ServerCert::Good,
        "ca.pem",
        ClientCert::V3,
        "wrong-password",
    ));
    let error = wait_until("a refused connection", DEADLINE, || agent.link().last_error).await;
    assert!(
        error.contains("refused") && error.contains("mqtt.password_file"),
        "{error}"
    );
    assert!(!agent.is_up());
}

/// Starts an agent against `server` trusting `ca` with `client`, and returns its first
/// connection error.
async fn handshake_error(server: ServerCert, ca: &str, client: ClientCert) -> String {
    let lab = TlsLab::new();
    let broker = TlsBroker::start(&lab);
    let agent = Agent::start(tls_mqtt(&lab, &broker, server, ca, client, "password"));
    let error = wait_until("a failed connection", DEADLINE, || agent.link().last_error).await;
    assert!(!agent.is_up());
    eprintln!("{server:?} / {ca} / {client:?}: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_an_unknown_issuer_is_reported_with_the_ca_setting_to_check() {
    let error = handshake_error(ServerCert::Good, "other-ca.pem", ClientCert::V3).await;
    assert!(
        error.contains("not signed by a CA we trust") && error.contains("mqtt.tls.ca_file"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_for_another_name_is_reported_with_the_name_we_used() {
    let error = handshake_error(ServerCert::WrongName, "ca.pem", ClientCert::V3).await;
    assert!(
        error.contains("not valid for \"localhost\"")
            && error.contains("mqtt.host")
            && error.contains("other.example"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_broker_certificate_is_reported_as_expired_with_its_date() {
    let error = handshake_error(ServerCert::Expired, "ca.pem", ClientCert::V3).await;
    assert!(
        error.contains("expired at 2020-01-02") && error.contains("clock"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_reported_as_one_the_broker_did_not_accept() {
    let error = handshake_error(ServerCert::Good, "ca.pem", ClientCert::Expired).await;
    assert!(
        error.contains("did not accept our client certificate")
            && error.contains("mqtt.tls.client_cert"),
        "{error}"
    );
}

/// Every attempt fails the same way: one warning with the cause, the rest at debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handshake_is_logged_at_warn_once_not_at_every_attempt() {
    let lab = TlsLab::new();
    let broker = TlsBroker::start(&lab);
    let prefix = agent::prefix("tls-warn");
    let toml = format!(
        r#"{head}host = "localhost"
backoff_initial = "100ms"
backoff_max = "200ms"
username = "gw1"
password_file = "{dir}/password"

[mqtt.tls]
ca_file = "{dir}/other-ca.pem"
client_cert = "{dir}/client.pem"
client_key = "{dir}/client.key"

[[bus]]
name = "lan"
type = "modbus_tcp"
address = "127.0.0.1:9"
timeout = "1s"

[[device]]
name = "meter"
bus = "lan"
unit = 1
interval = "1h"

[[device.point]]
name = "v"
table = "holding"
address = 0
type = "u16"
"#,
        head = agent::head(broker.port(ServerCert::Good), &prefix)
            .replace("host = \"127.0.0.1\"\n", ""),
        dir = lab.dir.path().display()
    );
    let agent = agent::Agent::start_with(ConfigDir::new(&toml), &[]);
    wait_until("five failed attempts", DEADLINE, || {
        let again = agent
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains("MQTT connect failed again"))
            .count();
        (again >= 4).then_some(())
    })
    .await;
    let warnings: Vec<String> = agent
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains(" WARN ") && l.contains("MQTT"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("not signed by a CA we trust")
            && warnings[0].contains("mqtt.tls.ca_file"),
        "{}",
        warnings[0]
    );
}
