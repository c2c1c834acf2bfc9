//! `fieldlink demo`: the real agent, end to end, with no outside service.
//!
//! Starts an in-process MQTT broker (rumqttd) and a simulated Modbus TCP boiler controller
//! (`sim`), points `config/demo.toml` at them, runs the very same `app::run` the daemon runs,
//! and prints every message a subscriber sees upstream. No logic of its own.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::config::{self, BusKind};

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

pub async fn run(seconds: Option<u64>) -> anyhow::Result<()> {
    let broker_port = start_broker()?;

    let modbus = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let modbus_addr = modbus.local_addr()?;
    let _simulator = crate::sim::serve_tcp(modbus, vec![crate::sim::demo_boiler(1)]);

    let mut config = config::load_str(Path::new("config/demo.toml"), DEMO_CONFIG)
        .map_err(|e| anyhow::anyhow!("the built-in demo config does not load:\n{e}"))?;
    config.mqtt.host = Ipv4Addr::LOCALHOST.to_string();
    config.mqtt.port = broker_port;
    config.mqtt.servers = vec![crate::config::Server {
        host: config.mqtt.host.clone(),
        port: broker_port,
    }];
    for bus in &mut config.buses {
        if let BusKind::ModbusTcp(tcp) = &mut bus.kind {
            tcp.address = modbus_addr.to_string();
        }
    }
    // The demo's buffer lives and dies with the demo, never in the real state directory.
    let state_dir = std::env::temp_dir().join(format!("fieldlink-demo-{}", std::process::id()));
    config.buffer.path = state_dir.clone();
    let prefix = config.mqtt.prefix.clone();
    println!(
        "demo: broker on 127.0.0.1:{broker_port}, simulated Modbus TCP device on {modbus_addr}"
    );
    println!("demo: messages under {prefix}/# as a subscriber sees them (R = retained):");

    let printer = tokio::spawn(print_messages(broker_port, format!("{prefix}/#")));

    let stop = crate::app::stop_on_signals()?;
    if let Some(s) = seconds {
        let timer = stop.clone();
        let filter = format!("{prefix}/#");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(s)).await;
            print_retained(broker_port, filter).await;
            timer.cancel();
        });
    }
    let result = crate::app::run(config, stop, None).await;
    // Let the subscriber print the final `offline` before leaving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    printer.abort();
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

/// rumqttd cannot report the port it bound, so take a free one first
/// (docs/design.md#rumqttd-020-the-demos-embedded-broker).
fn start_broker() -> anyhow::Result<u16> {
    let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let broker_config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 16,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("demo".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(broker_config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("demo: broker stopped: {e}");
            }
        })
        .context("cannot start the demo broker thread")?;
    Ok(port)
}

/// What a subscriber connecting now gets: the broker's retained value of every topic.
async fn print_retained(port: u16, filter: String) {
    println!("demo: a late subscriber connects and receives the retained values:");
    let mut opts = MqttOptions::new("fieldlink-demo-late", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
    // Retained messages follow the SUBACK at once; a quiet half second means they are all in.
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(500), events.poll()).await
    {
        if let Event::Incoming(Packet::Publish(p)) = event {
            if p.retain {
                println!("R {} {}", p.topic, String::from_utf8_lossy(&p.payload));
            }
        }
    }
    let _ = client.disconnect().await;
    println!("demo: stopping the agent");
}

async fn print_messages(port: u16, filter: String) {
    let mut opts = MqttOptions::new("fieldlink-demo-viewer", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => println!(
                "{} {} {}",
                if p.retain { "R" } else { " " },
                p.topic,
                String::from_utf8_lossy(&p.payload)
            ),
            Ok(_) => {}
            // The broker thread may still be binding: retry quietly.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
