//! The Modbus peers of the end-to-end suites behave as those suites assume, checked with
//! tokio-modbus' client (no agent involved): values, refusals, silence, late replies, pty
//! pairs and the pymodbus server.
mod support;

use std::time::Duration;

use serde_json::json;
use support::modbus::{self, words, Bank, Behaviour, Habit, PyModbus, Read, SimDevice};
use support::pty::PtyPair;
use tokio_modbus::client::{rtu, tcp, Context};
use tokio_modbus::prelude::*;

async fn tcp_client(addr: std::net::SocketAddr, unit: u8) -> Context {
    tcp::connect_slave(addr, Slave(unit)).await.unwrap()
}

fn rtu_client(path: &std::path::Path, unit: u8) -> Context {
    use tokio_serial::SerialPortBuilderExt;
    let port = tokio_serial::new(path.to_string_lossy(), 19200)
        .open_native_async()
        .unwrap();
    rtu::attach_slave(port, Slave(unit))
}

#[tokio::test]
async fn the_tcp_sim_serves_its_registers_refuses_unmapped_ones_and_can_fall_silent() {
    let dev = SimDevice::new(4);
    dev.set_registers(Bank::Holding, 10, &words::f32(3.5))
        .set_bits(Bank::Coil, 0, &[true, false, true]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let mut ctx = tcp_client(sim.addr, 4).await;
    assert_eq!(
        ctx.read_holding_registers(10, 2).await.unwrap().unwrap(),
        words::f32(3.5)
    );
    assert_eq!(
        ctx.read_coils(0, 3).await.unwrap().unwrap()[..3],
        [true, false, true]
    );
    assert_eq!(
        ctx.read_holding_registers(11, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    dev.set_behaviour(Behaviour::Silent);
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        ctx.read_holding_registers(10, 2),
    )
    .await;
    assert!(r.is_err(), "a silent device must not answer: {r:?}");
    sim.stop().await;
}

#[tokio::test]
async fn a_stopped_tcp_sim_comes_back_on_the_same_port() {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Input, 0, &[5]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let addr = sim.addr;
    sim.stop().await;
    // A stopped sim has closed its listener: its exact address can be bound again at once
    // (`serve_tcp_at` panics on AddrInUse otherwise). The sim's port is below the ephemeral
    // range, so no connection of another test can have been handed it meanwhile (with a
    // `bind(0)` port that happened now and then).
    let _sim = modbus::serve_tcp_at(addr, &[&dev]).await;
    let mut ctx = tcp_client(addr, 1).await;
    assert_eq!(ctx.read_input_registers(0, 1).await.unwrap().unwrap(), [5]);
}

#[tokio::test]
async fn a_tcp_sim_that_closes_after_every_reply_ends_the_connection_once_it_answered() {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[7]);
    let sim = modbus::serve_tcp_with(&[&dev], Habit::CloseAfterReply).await;
    let mut ctx = tcp_client(sim.addr, 1).await;
    assert_eq!(
        ctx.read_holding_registers(0, 1).await.unwrap().unwrap(),
        [7]
    );
    let second = tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(0, 1))
        .await
        .expect("a closed connection fails at once, it does not hang");
    assert!(
        second.is_err(),
        "the second request on the closed connection: {second:?}"
    );
    let mut fresh = tcp_client(sim.addr, 1).await;
    assert_eq!(
        fresh.read_holding_registers(0, 1).await.unwrap().unwrap(),
        [7]
    );
    assert_eq!(sim.connections(), 2);
}

#[tokio::test]
async fn a_tcp_sim_that_closes_idle_connections_keeps_a_busy_one_open() {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[7]);
    let sim =
        modbus::serve_tcp_with(&[&dev], Habit::CloseWhenIdle(Duration::from_millis(300))).await;
    let mut ctx = tcp_client(sim.addr, 1).await;
    for _ in 0..5 {
        assert_eq!(
            ctx.read_holding_registers(0, 1).await.unwrap().unwrap(),
            [7]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(0, 1))
        .await
        .expect("a closed connection fails at once");
    assert!(
        late.is_err(),
        "the idle connection should have been closed: {late:?}"
    );
    assert_eq!(sim.connections(), 1);
}

#[tokio::test]
async fn a_unit_can_be_silent_on_one_block_or_for_its_next_requests_and_logs_every_read() {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[1, 2])
        .set_registers(Bank::Holding, 100, &[3]);
    dev.set_silent_at(Bank::Holding, 100);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let mut ctx = tcp_client(sim.addr, 1).await;
    assert_eq!(
        ctx.read_holding_registers(0, 2).await.unwrap().unwrap(),
        [1, 2]
    );
    let silent = tokio::time::timeout(
        Duration::from_millis(300),
        ctx.read_holding_registers(100, 1),
    )
    .await;
    assert!(silent.is_err(), "block 100 must stay silent: {silent:?}");

    let mut ctx = tcp_client(sim.addr, 1).await;
    dev.silent_for_next(1);
    let first =
        tokio::time::timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 1)).await;
    assert!(
        first.is_err(),
        "the next request must go unanswered: {first:?}"
    );
    let mut ctx = tcp_client(sim.addr, 1).await;
    assert_eq!(
        ctx.read_holding_registers(0, 1).await.unwrap().unwrap(),
        [1]
    );
    let read = |start, count| Read {
        bank: Bank::Holding,
        start,
        count,
    };
    assert_eq!(
        dev.reads(),
        vec![read(0, 2), read(100, 1), read(0, 1), read(0, 1)]
    );
}

#[tokio::test]
async fn a_garbled_rtu_reply_is_refused_by_a_client_and_the_next_one_is_clean() {
    let pty = PtyPair::start();
    let dev = SimDevice::new(3);
    dev.set_registers(Bank::Holding, 0, &[0x1234, 0x5678]);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let mut ctx = rtu_client(&pty.agent, 3);
    dev.garble_next(1);
    let garbled =
        tokio::time::timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 2)).await;
    assert!(
        !matches!(garbled, Ok(Ok(Ok(_)))),
        "a reply with a broken CRC must not be taken: {garbled:?}"
    );
    assert_eq!(dev.garbled_replies(), 1);
    // A fresh client: tokio-modbus' codec stays errored after a bad frame.
    drop(ctx);
    let mut ctx = rtu_client(&pty.agent, 3);
    let clean = tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(0, 2))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(clean, [0x1234, 0x5678]);
}

/// The trap the agent must avoid (docs/design.md#tokio-modbus-017): a naive client that times
/// out and asks again takes the late reply as its next answer. Shows the RTU late test really
/// sets that trap.
#[tokio::test]
async fn over_a_pty_pair_a_late_rtu_reply_fools_a_naive_client() {
    let pty = PtyPair::start();
    let dev = SimDevice::new(2);
    dev.set_registers(Bank::Holding, 0, &[3333])
        .set_registers(Bank::Holding, 200, &[4444]);
    dev.set_late_at(Bank::Holding, 0, Duration::from_millis(300));
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let mut ctx = rtu_client(&pty.agent, 2);
    assert_eq!(
        ctx.read_holding_registers(200, 1).await.unwrap().unwrap(),
        [4444]
    );
    let first =
        tokio::time::timeout(Duration::from_millis(200), ctx.read_holding_registers(0, 1)).await;
    assert!(first.is_err(), "the late request should time out");
    let next = tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(200, 1))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next,
        [3333],
        "the naive client took the late reply as its answer"
    );
    assert_eq!(dev.late_replies(), 1);
}

#[tokio::test]
async fn the_rtu_sim_answers_only_its_own_units() {
    let pty = PtyPair::start();
    let a = SimDevice::new(1);
    a.set_registers(Bank::Input, 0, &[1]);
    let b = SimDevice::new(2);
    b.set_registers(Bank::Input, 0, &[2]);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&a, &b]);
    let mut ctx = rtu_client(&pty.agent, 1);
    assert_eq!(ctx.read_input_registers(0, 1).await.unwrap().unwrap(), [1]);
    ctx.set_slave(Slave(2));
    assert_eq!(ctx.read_input_registers(0, 1).await.unwrap().unwrap(), [2]);
    ctx.set_slave(Slave(3));
    let r = tokio::time::timeout(Duration::from_millis(300), ctx.read_input_registers(0, 1)).await;
    assert!(r.is_err(), "unit 3 does not exist and must stay quiet");
}

fn py_map() -> serde_json::Value {
    json!({ "5": { "holding": { "0": 65535, "1": 7 }, "input": { "2": 9 }, "coil": { "1": 1 } } })
}

#[tokio::test]
async fn the_pymodbus_tcp_server_serves_its_map_at_zero_based_addresses() {
    let py = PyModbus::tcp(&py_map());
    let mut ctx = tcp_client(py.address().parse().unwrap(), 5).await;
    assert_eq!(
        ctx.read_holding_registers(0, 2).await.unwrap().unwrap(),
        [65535, 7]
    );
    assert_eq!(ctx.read_input_registers(2, 1).await.unwrap().unwrap(), [9]);
    assert!(ctx.read_coils(0, 2).await.unwrap().unwrap()[1]);
}

#[tokio::test]
async fn the_pymodbus_rtu_server_serves_its_map_over_a_socat_pty() {
    let pty = PtyPair::start();
    let _py = PyModbus::rtu(&py_map(), &pty.sim, 19200);
    let mut ctx = rtu_client(&pty.agent, 5);
    let r = tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(0, 2))
        .await
        .expect("pymodbus RTU answers within 5 s");
    assert_eq!(r.unwrap().unwrap(), [65535, 7]);
}
