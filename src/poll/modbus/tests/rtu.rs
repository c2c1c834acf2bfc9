//! The poller over Modbus RTU on a pty: values, late replies, silent units, garbage, a
//! missing or hung-up port.

use super::*;

#[tokio::test]
async fn rtu_readings_over_a_pty_have_the_right_values() {
    let (master, _slave, path) = pty_line();
    let (dev, points, expected) = rich_device();
    let server = serve_rtu(master, vec![dev]);
    let run = Running::start(
        rtu_bus(path),
        vec![device("boiler", "rtu0", 1, 100, points)],
    );
    assert_values_arrive(&run.sink, "boiler", &expected).await;
    assert_eq!(run.sink.availability("boiler"), vec![true]);
    run.stop().await;
    server.abort();
}

/// Two same-shaped reads of the same unit (holding 0-1 and 10-11) with different values:
/// if a late answer to one were taken as the answer to the next, `a` would read `b`'s value.
#[tokio::test]
async fn rtu_never_takes_a_late_reply_as_the_answer_to_the_next_request() {
    let (master, _slave, path) = pty_line();
    let slow = SimDevice::new(3);
    slow.with_banks(|b| {
        b.set_holding(0, &to_words(&111_111u32.to_be_bytes(), WordOrder::Abcd));
        b.set_holding(10, &to_words(&222_222u32.to_be_bytes(), WordOrder::Abcd));
    });
    // Late by 1.5 response timeouts. Every 6th request is the third `b`: the cycle fails
    // there and the next request is an `a`, which must not get `b`'s late answer.
    slow.set_behaviour(Behaviour::LateEvery {
        every: 6,
        delay: Duration::from_millis(150),
    });
    let server = serve_rtu(master, vec![slow.clone()]);
    let points = vec![
        point("a", Table::Holding, 0, DataType::U32),
        point("b", Table::Holding, 10, DataType::U32),
    ];
    let run = Running::start(rtu_bus(path), vec![device("slow", "rtu0", 3, 20, points)]);

    wait_until("10 readings of each point", Duration::from_secs(30), || {
        (run.sink.count("slow", "a") >= 10 && run.sink.count("slow", "b") >= 10).then_some(())
    })
    .await;
    // At least four late answers went by.
    assert!(slow.requests() >= 24, "{} requests", slow.requests());
    let a = run.sink.values("slow", "a");
    let b = run.sink.values("slow", "b");
    assert!(a.iter().all(|v| *v == Value::Int(111_111)), "a: {a:?}");
    assert!(b.iter().all(|v| *v == Value::Int(222_222)), "b: {b:?}");
    run.stop().await;
    server.abort();
}

/// Time for `point` of `device` to gain `n` more readings.
async fn time_for_readings(sink: &Recorder, device: &str, point: &str, n: usize) -> Duration {
    let start = Instant::now();
    let from = sink.count(device, point);
    wait_until(
        &format!("{n} readings of {device}"),
        Duration::from_secs(30),
        || (sink.count(device, point) >= from + n).then_some(()),
    )
    .await;
    start.elapsed()
}

#[tokio::test]
async fn a_silent_rtu_device_does_not_slow_its_neighbour_on_the_line() {
    let (master, _slave, path) = pty_line();
    let healthy = SimDevice::new(1);
    healthy.with_banks(|b| b.set_holding(0, &[5]));
    let dead = SimDevice::new(2);
    dead.with_banks(|b| b.set_holding(0, &[6]));
    let server = serve_rtu(master, vec![healthy, dead.clone()]);
    let p = || vec![point("v", Table::Holding, 0, DataType::U16)];
    let run = Running::start(
        rtu_bus(path),
        vec![
            device("healthy", "rtu0", 1, 50, p()),
            device("dead", "rtu0", 2, 50, p()),
        ],
    );
    wait_until("both online", Duration::from_secs(5), || {
        (run.sink.availability("dead") == vec![true]).then_some(())
    })
    .await;
    let baseline = time_for_readings(&run.sink, "healthy", "v", 30).await;

    dead.set_behaviour(Behaviour::Silent);
    wait_until("dead reported offline", Duration::from_secs(5), || {
        (run.sink.availability("dead") == vec![true, false]).then_some(())
    })
    .await;
    let probes_before = dead.requests();
    let degraded = time_for_readings(&run.sink, "healthy", "v", 30).await;
    let probes = dead.requests() - probes_before;

    // Without backoff every 50 ms cycle of `dead` would cost a 100 ms timeout plus the
    // settle time, cutting `healthy` to well under half its rate.
    assert!(
        degraded.as_secs_f64() < baseline.as_secs_f64() * 1.5,
        "healthy slowed from {baseline:?} to {degraded:?} for 30 readings"
    );
    // Probed a handful of times (backoff 1 s, 2 s, ...), not every cycle.
    assert!(probes <= 4, "dead probed {probes} times in {degraded:?}");
    assert_eq!(run.sink.values("healthy", "v").last(), Some(&Value::Int(5)));
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn rtu_garbage_and_bad_crc_fail_the_device_not_the_line() {
    for fault in [Behaviour::BadCrc, Behaviour::Garbage] {
        let (master, _slave, path) = pty_line();
        let good = SimDevice::new(1);
        good.with_banks(|b| b.set_holding(0, &[100, 101]));
        let noisy = SimDevice::new(2);
        noisy.with_banks(|b| b.set_holding(0, &[200, 201]));
        noisy.set_behaviour(fault);
        let server = serve_rtu(master, vec![good, noisy.clone()]);
        let p = || vec![point("v", Table::Holding, 0, DataType::U32)];
        let run = Running::start(
            rtu_bus(path),
            vec![
                device("good", "rtu0", 1, 30, p()),
                device("noisy", "rtu0", 2, 30, p()),
            ],
        );
        wait_until("noisy offline", Duration::from_secs(5), || {
            (run.sink.availability("noisy") == vec![false]).then_some(())
        })
        .await;
        let before = run.sink.count("good", "v");
        wait_until("good keeps reading", Duration::from_secs(5), || {
            (run.sink.count("good", "v") >= before + 10).then_some(())
        })
        .await;
        noisy.set_behaviour(Behaviour::Normal);
        wait_until("noisy back online", Duration::from_secs(10), || {
            (run.sink.availability("noisy") == vec![false, true]).then_some(())
        })
        .await;
        let good_values = run.sink.values("good", "v");
        assert!(
            good_values
                .iter()
                .all(|v| *v == Value::Int((100 << 16) | 101)),
            "{fault:?}: {good_values:?}"
        );
        assert!(run
            .sink
            .values("noisy", "v")
            .iter()
            .all(|v| *v == Value::Int((200 << 16) | 201)));
        run.stop().await;
        server.abort();
    }
}

#[tokio::test]
async fn a_serial_port_that_does_not_exist_is_retried_without_crashing() {
    let path = PathBuf::from("/dev/serial/by-id/usb-fieldlink-test-does-not-exist-if00");
    let bus = rtu_bus(path.clone());
    let dev = device(
        "meter",
        "rtu0",
        1,
        50,
        vec![point("v", Table::Holding, 0, DataType::U16)],
    );

    match read_once(&bus, &dev).await {
        Err(ReadOnceError::Unreachable(message)) => {
            assert!(message.contains(path.to_str().unwrap()), "{message}");
            assert!(message.contains("/dev/serial/by-id"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }

    let run = Running::start(bus, vec![dev]);
    wait_until("meter offline", Duration::from_secs(5), || {
        (run.sink.availability("meter") == vec![false]).then_some(())
    })
    .await;
    assert!(!run.task.is_finished(), "run_bus must keep retrying");
    run.stop().await;
}

#[tokio::test]
async fn read_once_refuses_a_device_of_another_bus() {
    let bus = rtu_bus(PathBuf::from("/dev/null"));
    let dev = device("meter", "elsewhere", 1, 50, vec![]);
    assert!(matches!(
        read_once(&bus, &dev).await,
        Err(ReadOnceError::WrongBus { .. })
    ));
}

#[tokio::test]
async fn a_hung_up_serial_line_marks_devices_offline_and_the_bus_keeps_running() {
    let (master, slave, path) = pty_line();
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[9]));
    let server = serve_rtu(master, vec![dev]);
    let run = Running::start(
        rtu_bus(path),
        vec![device(
            "meter",
            "rtu0",
            1,
            50,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until("a reading", Duration::from_secs(5), || {
        run.sink.values("meter", "v").first().cloned()
    })
    .await;
    // Closing the master end is what an unplugged adapter looks like from the slave side.
    server.abort();
    let _ = server.await;
    drop(slave);
    wait_until(
        "meter offline after the hang-up",
        Duration::from_secs(5),
        || (run.sink.availability("meter") == vec![true, false]).then_some(()),
    )
    .await;
    assert!(!run.task.is_finished(), "run_bus must keep retrying");
    run.stop().await;
}
