//! The harness itself works: a real mosquitto starts on a free port and delivers retained
//! messages to a late subscriber.
mod support;

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};

#[tokio::test]
async fn broker_starts_and_a_late_subscriber_gets_the_retained_message() {
    let broker = support::Broker::start();
    let topic = support::unique("selftest");
    let (client, mut ev) = AsyncClient::new(MqttOptions::new("pub", "127.0.0.1", broker.port), 10);
    let drive = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    client
        .publish(&topic, QoS::AtLeastOnce, true, "42")
        .await
        .unwrap();
    let watch = support::watch::Watch::start(broker.port, &topic).await;
    let m = watch
        .wait_for(&topic, Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(m.payload, "42");
    assert!(m.retain);
    drive.abort();
}

/// A port someone else listens on is not mistaken for the broker's: mosquitto cannot bind it
/// and exits, and starting it says so instead of handing the test another peer.
#[test]
fn a_broker_whose_port_is_taken_reports_it_instead_of_passing_for_the_other_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(support::broker::mosquitto_bin());
    cmd.arg("-c").arg(&conf);
    match support::broker::spawn_listening(&mut cmd, port) {
        Err(e) => assert!(e.contains("exited"), "{e}"),
        Ok(mut child) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spawn_listening took the test's own listener on {port} for mosquitto");
        }
    }
}
