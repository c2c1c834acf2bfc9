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
