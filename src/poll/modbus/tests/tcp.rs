//! The poller over Modbus TCP: values, exceptions, fallbacks, availability, reconnects.

use super::*;

#[tokio::test]
async fn tcp_readings_arrive_with_the_right_values_and_the_device_online() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let (dev, points, expected) = rich_device();
    let server = serve_tcp(listener, vec![dev]);
    let run = Running::start(bus, vec![device("boiler", "tcp0", 1, 100, points)]);

    assert_values_arrive(&run.sink, "boiler", &expected).await;
    assert_eq!(run.sink.availability("boiler"), vec![true]);
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn the_demo_boiler_decodes_with_the_demo_point_map() {
    use sim::demo_map::*;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let server = serve_tcp(listener, vec![sim::demo_boiler(1)]);
    let mut pressure = point("pressure", Table::Holding, PRESSURE, DataType::F32);
    pressure.order = WordOrder::Cdab;
    let mut temperature = point("temperature", Table::Input, TEMPERATURE, DataType::I16);
    temperature.scale = 0.1;
    let points = vec![
        pressure,
        temperature,
        point("energy", Table::Input, ENERGY, DataType::U32),
        point("runtime_s", Table::Holding, RUNTIME, DataType::U32),
        point("running", Table::Coil, RUNNING, DataType::Bool),
        point(
            "serial",
            Table::Holding,
            SERIAL,
            DataType::String {
                registers: SERIAL_REGISTERS,
            },
        ),
    ];
    let mut demo = device("boiler", "tcp0", 1, 100, points);
    modbus_mut(&mut demo).max_gap = 10;
    let report = read_once(&bus, &demo).await.unwrap();
    let value = |name: &str| {
        report
            .points
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.value.clone().ok())
            .unwrap_or_else(|| panic!("{name} read"))
    };
    assert!(matches!(value("pressure"), Value::Float(p) if (1.3..1.7).contains(&p)));
    assert!(matches!(value("temperature"), Value::Float(t) if (55.0..70.0).contains(&t)));
    assert!(matches!(value("energy"), Value::Int(e) if e >= 1_250_000));
    assert!(matches!(value("runtime_s"), Value::Int(r) if r >= 2_592_000));
    assert!(matches!(value("running"), Value::Bool(_)));
    assert_eq!(value("serial"), Value::Text(SERIAL_NUMBER.into()));
    // The boiler maps its gaps, so max_gap 10 reads coil 0, input 0-2 and holding 0-27.
    assert_eq!(report.requests.len(), 3);
    server.abort();
}

#[tokio::test]
async fn a_merged_read_refused_across_unmapped_registers_falls_back_to_single_point_reads() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(3);
    // Registers 1..=4 are not mapped: a read of 0..=5 is refused as a whole.
    dev.with_banks(|b| {
        b.set_holding(0, &[11]);
        b.set_holding(5, &[55]);
    });
    let server = serve_tcp(listener, vec![dev.clone()]);
    let mut meter = device(
        "meter",
        "tcp0",
        3,
        50,
        vec![
            point("a", Table::Holding, 0, DataType::U16),
            point("b", Table::Holding, 5, DataType::U16),
        ],
    );
    modbus_mut(&mut meter).max_gap = 8;
    let run = Running::start(bus, vec![meter]);

    wait_until("readings of both points", Duration::from_secs(5), || {
        (run.sink.count("meter", "a") >= 3 && run.sink.count("meter", "b") >= 3).then_some(())
    })
    .await;
    assert!(run
        .sink
        .values("meter", "a")
        .iter()
        .all(|v| *v == Value::Int(11)));
    assert!(run
        .sink
        .values("meter", "b")
        .iter()
        .all(|v| *v == Value::Int(55)));
    assert_eq!(run.sink.availability("meter"), vec![true]);
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn an_exception_marks_only_its_points_bad_and_the_device_stays_online() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(7);
    dev.with_banks(|b| b.set_holding(0, &[42]));
    let server = serve_tcp(listener, vec![dev.clone()]);
    let points = vec![
        point("good", Table::Holding, 0, DataType::U16),
        // Unmapped: the sim answers IllegalDataAddress for this request only.
        point("missing", Table::Holding, 100, DataType::U16),
    ];
    let run = Running::start(
        bus.clone(),
        vec![device("meter", "tcp0", 7, 50, points.clone())],
    );

    wait_until(
        "10 readings of the good point",
        Duration::from_secs(5),
        || (run.sink.count("meter", "good") >= 10).then_some(()),
    )
    .await;
    assert!(run
        .sink
        .values("meter", "good")
        .iter()
        .all(|v| *v == Value::Int(42)));
    assert_eq!(run.sink.count("meter", "missing"), 0);
    assert_eq!(
        run.sink.qualities("meter", "missing"),
        [Quality::Exception(2)],
        "published bad once, not at every poll"
    );
    assert_eq!(run.sink.availability("meter"), vec![true]);
    run.stop().await;

    let report = read_once(&bus, &device("meter", "tcp0", 7, 50, points))
        .await
        .unwrap();
    assert_eq!(report.requests.len(), 2);
    assert_eq!(report.requests[0].outcome, Ok(RawData::Registers(vec![42])));
    assert_eq!(
        report.requests[1].outcome,
        Err(RequestFailure::Exception(ExceptionCode::IllegalDataAddress))
    );
    assert_eq!(report.points[0].value, Ok(Value::Int(42)));
    assert!(report.points[1]
        .value
        .as_ref()
        .unwrap_err()
        .contains("exception 2 (illegal data address"));
    server.abort();
}

#[tokio::test]
async fn a_silent_tcp_device_goes_offline_and_comes_back_while_its_neighbour_keeps_polling() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let alive = SimDevice::new(1);
    alive.with_banks(|b| b.set_holding(0, &[1]));
    let mute = SimDevice::new(2);
    mute.with_banks(|b| b.set_holding(0, &[2]));
    mute.set_behaviour(Behaviour::Silent);
    let server = serve_tcp(listener, vec![alive, mute.clone()]);
    let p = || vec![point("v", Table::Holding, 0, DataType::U16)];
    let run = Running::start(
        bus,
        vec![
            device("alive", "tcp0", 1, 50, p()),
            device("mute", "tcp0", 2, 50, p()),
        ],
    );

    wait_until("mute reported offline", Duration::from_secs(5), || {
        (run.sink.availability("mute") == vec![false]).then_some(())
    })
    .await;
    let before = run.sink.count("alive", "v");
    wait_until("alive keeps polling", Duration::from_secs(5), || {
        (run.sink.count("alive", "v") >= before + 10).then_some(())
    })
    .await;
    mute.set_behaviour(Behaviour::Normal);
    wait_until("mute back online", Duration::from_secs(10), || {
        (run.sink.availability("mute") == vec![false, true]).then_some(())
    })
    .await;
    assert_eq!(run.sink.values("mute", "v").last(), Some(&Value::Int(2)));
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_device_with_offline_after_1_goes_offline_at_its_first_failed_poll() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[1]));
    let server = serve_tcp(listener, vec![dev.clone()]);
    let mut impatient = device(
        "impatient",
        "tcp0",
        1,
        50,
        vec![point("v", Table::Holding, 0, DataType::U16)],
    );
    modbus_mut(&mut impatient).offline_after = 1;
    let run = Running::start(bus, vec![impatient]);
    wait_until("online", Duration::from_secs(5), || {
        (run.sink.availability("impatient") == vec![true]).then_some(())
    })
    .await;
    dev.set_behaviour(Behaviour::Silent);
    // Every request counted from here on goes unanswered (one may have come just before).
    let before = dev.requests();
    wait_until("offline", Duration::from_secs(5), || {
        (run.sink.availability("impatient") == vec![true, false]).then_some(())
    })
    .await;
    let unanswered = dev.requests() - before;
    assert!(
        unanswered <= 1,
        "offline after {unanswered} more unanswered requests"
    );
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_point_with_a_longer_interval_is_polled_at_its_own_rate() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[1, 2]));
    let server = serve_tcp(listener, vec![dev]);
    let mut slow = point("slow", Table::Holding, 1, DataType::U16);
    slow.interval = Some(Duration::from_millis(500));
    let points = vec![point("fast", Table::Holding, 0, DataType::U16), slow];
    let run = Running::start(bus, vec![device("d", "tcp0", 1, 50, points)]);
    wait_until("40 fast readings", Duration::from_secs(10), || {
        (run.sink.count("d", "fast") >= 40).then_some(())
    })
    .await;
    let (fast, slow) = (run.sink.count("d", "fast"), run.sink.count("d", "slow"));
    assert!(slow >= 1 && slow * 4 <= fast, "fast {fast}, slow {slow}");
    assert_eq!(run.sink.values("d", "slow")[0], Value::Int(2));
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn tcp_reconnects_after_the_server_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[10]));
    let server = serve_tcp(listener, vec![dev.clone()]);
    let run = Running::start(
        tcp_bus(addr),
        vec![device(
            "plc",
            "tcp0",
            1,
            50,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until("first reading", Duration::from_secs(5), || {
        run.sink.values("plc", "v").first().cloned()
    })
    .await;

    server.abort();
    let _ = server.await;
    wait_until(
        "plc offline while the server is down",
        Duration::from_secs(5),
        || (run.sink.availability("plc") == vec![true, false]).then_some(()),
    )
    .await;
    dev.with_banks(|b| b.set_holding(0, &[11]));
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = serve_tcp(listener, vec![dev]);
    wait_until(
        "a reading from the restarted server",
        Duration::from_secs(10),
        || {
            run.sink
                .values("plc", "v")
                .contains(&Value::Int(11))
                .then_some(())
        },
    )
    .await;
    assert_eq!(run.sink.availability("plc"), vec![true, false, true]);
    run.stop().await;
    server.abort();
}
