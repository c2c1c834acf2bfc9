//! Hand-timed micro benches of the agent's hot paths (criterion would add ~30 crates to a
//! tree built on Pi-class CI): decode, plan, encode, the in-memory outbox, the deadband
//! filter. Printed and written as JSON like the agent bench, never asserted.
//!
//! Run: `cargo bench --bench micro`. Results: the table on stdout and
//! `$CARGO_TARGET_DIR/bench/micro.json` (else `target/bench/micro.json`).
#[path = "agent/names.rs"]
mod names;
#[path = "agent/report.rs"]
mod report;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldlink::buffer::{Outbox, ReadingNumber};
use fieldlink::config::{
    DataType, Deadband, PayloadMode, Point, ReportByException, Table, WordOrder,
};
use fieldlink::model::{Reading, Value};
use fieldlink::poll::modbus::codec::decode_registers;
use fieldlink::poll::modbus::plan::plan;
use fieldlink::sim;
use fieldlink::uplink::report::ExceptionFilter;
use fieldlink::uplink::topic;
use serde_json::json;

use names::point_name;
use report::Report;

fn time_ns(iterations: u64, mut f: impl FnMut(u64)) -> f64 {
    for i in 0..iterations / 10 {
        f(i);
    }
    let t = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / iterations as f64
}

fn micro(report: &mut Report) {
    let point = |i: usize| Point {
        name: point_name(i),
        table: Table::Holding,
        address: 2 * i as u16,
        data_type: DataType::F32,
        order: WordOrder::Abcd,
        scale: 1.0,
        offset: 0.0,
        unit: Some("V".into()),
        interval: None,
        write: None,
    };
    let points: Vec<Point> = (0..40).map(point).collect();
    let words = sim::to_words(&230.123f32.to_be_bytes(), WordOrder::Abcd);
    report.add(
        "micro",
        "decode f32 point",
        time_ns(2_000_000, |_| {
            black_box(decode_registers(black_box(&points[0]), black_box(&words)).ok());
        }),
        "ns/op",
    );
    report.add(
        "micro",
        "plan 40 points",
        time_ns(200_000, |_| {
            black_box(plan(black_box(&points), 10));
        }),
        "ns/op",
    );
    let reading = Reading {
        device: Arc::from("m0_1"),
        point: Arc::from("voltage_l1"),
        value: Ok(Value::Float(230.123)),
        unit: Some(Arc::from("V")),
        ts_ms: 1_764_000_000_000,
    };
    report.add(
        "micro",
        "encode json reading (topic + payload)",
        time_ns(1_000_000, |i| {
            black_box(topic::reading_topic(
                "fl/gw-0001",
                &reading.device,
                &reading.point,
            ));
            black_box(topic::reading_payload(
                PayloadMode::Json,
                black_box(&reading),
                ReadingNumber { boot: 1, seq: i },
            ));
        }),
        "ns/op",
    );
    let values: Vec<(String, Result<Value, fieldlink::model::Quality>)> = (0..24)
        .map(|i| (point_name(i), Ok(Value::Float(100.0 + i as f64 * 1.37))))
        .collect();
    report.add(
        "micro",
        "encode device payload, 24 points",
        time_ns(200_000, |i| {
            black_box(topic::device_payload(
                1_764_000_000_000,
                ReadingNumber { boot: 1, seq: i },
                values.iter().map(|(n, v)| (n.as_str(), v)),
            ));
        }),
        "ns/op",
    );
    let outbox = Outbox::new(1_000_000, 1);
    report.add(
        "micro",
        "outbox push + take + ack (memory)",
        time_ns(1_000_000, |i| {
            outbox.push_reading(format!("fl/gw/m/p{}", i % 100), 0, |n| {
                n.seq.to_le_bytes().to_vec()
            });
            for r in outbox.take(1) {
                outbox.ack(r.seq);
            }
        }),
        "ns/op",
    );
    let mut filter = ExceptionFilter::new(ReportByException {
        deadband: Deadband::Absolute(0.5),
        max_interval: Duration::from_secs(300),
    });
    let readings: Vec<Reading> = (0..24)
        .map(|i| Reading {
            point: Arc::from(point_name(i).as_str()),
            ..reading.clone()
        })
        .collect();
    report.add(
        "micro",
        "deadband filter admit",
        time_ns(2_000_000, |i| {
            black_box(filter.admit(black_box(&readings[i as usize % 24])));
        }),
        "ns/op",
    );
}

fn main() {
    // `cargo test` runs bench targets without --bench only when asked; measure only here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let started = Instant::now();
    let mut report = Report::default();
    println!("fieldlink micro benches");
    micro(&mut report);
    println!("\n{}", report.table());
    report.write("micro", json!({ "mode": "full" }), started);
}
