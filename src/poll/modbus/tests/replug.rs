//! An RTU adapter pulled and plugged back (or a by-id link re-pointed): the bus drops the
//! port at once and picks the new one up within two seconds.

use super::*;

/// A USB RS-485 adapter on a pty: the sim serves the master, the agent opens the slave
/// through `link` as through a udev /dev/serial/by-id link.
struct Adapter {
    server: JoinHandle<()>,
    /// Held so the master never reads EIO before the agent opens the slave.
    slave: SerialStream,
    slave_name: String,
    link: PathBuf,
}

impl Adapter {
    fn plug(link: &std::path::Path, devices: Vec<Arc<SimDevice>>) -> Adapter {
        let (master, slave, name) = pty_line();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&name, link).expect("symlink to the pty");
        Adapter {
            server: serve_rtu(master, devices),
            slave,
            slave_name: name.to_string_lossy().into_owned(),
            link: link.to_path_buf(),
        }
    }

    /// Pulls the adapter: the link goes and the master closes, so the slave hangs up. The
    /// test's own slave fd stays open (returned) until the caller drops it: it keeps the
    /// pty's number from being reused, so fds on it can be counted.
    async fn pull(self) -> (SerialStream, String) {
        let _ = std::fs::remove_file(&self.link);
        self.server.abort();
        let _ = self.server.await;
        (self.slave, self.slave_name)
    }
}

/// Open fds of this process on the pty slave `name` (a hung-up one reads "(deleted)").
fn fds_on(name: &str) -> usize {
    let deleted = format!("{name} (deleted)");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t == name || t == deleted
        })
        .count()
}

/// Pulls and re-plugs the adapter of a bus whose one device is polled every `interval_ms`;
/// returns how long after the pull the device was offline and the agent's fd closed, and
/// how long after the path reappeared the first new reading arrived.
async fn replug_scenario(interval_ms: u64) -> (Duration, Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join("usb-FTDI_USB-RS485_Cable_FT0001-if00-port0");
    let meter = SimDevice::new(1);
    meter.with_banks(|b| b.set_holding(0, &[1]));
    let adapter = Adapter::plug(&link, vec![meter.clone()]);
    let run = Running::start(
        rtu_bus(link.clone()),
        vec![device(
            "meter",
            "rtu0",
            1,
            interval_ms,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until("a reading before the pull", Duration::from_secs(10), || {
        run.sink.first_reading_at("meter", "v", &Value::Int(1))
    })
    .await;

    let pulled = Instant::now();
    let (old_slave, old_name) = adapter.pull().await;
    wait_until(
        "meter offline after the pull",
        Duration::from_secs(10),
        || (run.sink.availability("meter") == vec![true, false]).then_some(()),
    )
    .await;
    let offline_after = pulled.elapsed();
    // Only the test's own fd is left on the old pty: the agent dropped its port, so a real
    // adapter plugged back would get its old /dev/ttyUSBn name again.
    wait_until(
        "the agent's fd on the old pty closed",
        Duration::from_secs(10),
        || (fds_on(&old_name) == 1).then_some(()),
    )
    .await;
    let fd_closed_after = pulled.elapsed();
    drop(old_slave);

    // Stay unplugged a while: the bus must wait quietly. The random part puts the re-plug
    // anywhere within the 250 ms look at the path, so the pickup is not always one phase.
    let samples_while_down = run.sink.len();
    tokio::time::sleep(Duration::from_millis(1000 + fastrand::u64(0..250))).await;
    assert_eq!(
        run.sink.len(),
        samples_while_down,
        "samples while unplugged"
    );

    meter.with_banks(|b| b.set_holding(0, &[2]));
    let _adapter = Adapter::plug(&link, vec![meter.clone()]);
    let replugged = Instant::now();
    let first = wait_until(
        "a reading after the re-plug",
        Duration::from_secs(10),
        || run.sink.first_reading_at("meter", "v", &Value::Int(2)),
    )
    .await;
    let pickup = first.duration_since(replugged);
    println!(
        "RTU re-plug (device interval {interval_ms} ms): offline {offline_after:?} and fd \
         closed {fd_closed_after:?} after the pull; first reading {pickup:?} after the path \
         reappeared"
    );
    assert_eq!(run.sink.availability("meter"), vec![true, false, true]);
    run.stop().await;
    (offline_after, fd_closed_after, pickup)
}

#[tokio::test]
async fn rtu_bus_replugged_at_the_same_path_goes_offline_then_resumes_within_two_seconds() {
    let (_, _, pickup) = replug_scenario(100).await;
    assert!(
        pickup <= Duration::from_secs(2),
        "readings resumed {pickup:?} after the path reappeared; the spec is 2 s"
    );
}

/// A device polled every 30 s: nothing is due when the adapter goes, yet the bus notices the
/// hang-up within its watch period, drops the fd, takes the device offline, and polls it as
/// soon as the port is back rather than at its next turn.
#[tokio::test]
async fn rtu_bus_idle_between_polls_drops_a_hung_up_port_and_polls_at_once_when_it_is_back() {
    let (offline_after, fd_closed_after, pickup) = replug_scenario(30_000).await;
    // Generous against a loaded machine; the watch looks every 250 ms, the next poll would
    // be 30 s away.
    assert!(offline_after < Duration::from_secs(5), "{offline_after:?}");
    assert!(
        fd_closed_after < Duration::from_secs(5),
        "{fd_closed_after:?}"
    );
    assert!(
        pickup <= Duration::from_secs(2),
        "readings resumed {pickup:?} after the path reappeared; the spec is 2 s"
    );
}

/// Every device on the line goes offline together when the port goes, not one by one as
/// each gets its turn to fail (which would take a watch period per device).
#[tokio::test]
async fn rtu_bus_takes_every_device_offline_together_when_its_port_goes() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join("usb-FTDI_USB-RS485_Cable_FT0003-if00-port0");
    let units: Vec<Arc<SimDevice>> = (1..=6)
        .map(|unit| {
            let d = SimDevice::new(unit);
            d.with_banks(|b| b.set_holding(0, &[u16::from(unit)]));
            d
        })
        .collect();
    let adapter = Adapter::plug(&link, units);
    let names: Vec<String> = (1..=6).map(|u| format!("m{u}")).collect();
    let run = Running::start(
        rtu_bus(link.clone()),
        names
            .iter()
            .zip(1u8..)
            .map(|(name, unit)| {
                device(
                    name,
                    "rtu0",
                    unit,
                    100,
                    vec![point("v", Table::Holding, 0, DataType::U16)],
                )
            })
            .collect(),
    );
    wait_until("every device online", Duration::from_secs(10), || {
        names
            .iter()
            .all(|n| run.sink.availability(n) == vec![true])
            .then_some(())
    })
    .await;
    let (_old_slave, _) = adapter.pull().await;
    let offline = wait_until("every device offline", Duration::from_secs(10), || {
        names
            .iter()
            .map(|n| run.sink.offline_at(n).first().copied())
            .collect::<Option<Vec<Instant>>>()
    })
    .await;
    let first = *offline.iter().min().unwrap();
    let spread = offline
        .iter()
        .map(|t| t.duration_since(first))
        .max()
        .unwrap();
    println!("6 devices offline within {spread:?} of each other");
    assert!(
        spread < crate::poll::serial_port::WATCH_PERIOD,
        "devices went offline one by one over {spread:?}"
    );
    run.stop().await;
}

/// udev re-points a by-id link when an adapter is swapped: the path now names another node,
/// so the bus drops the old port (even though it still works) and opens the new one.
#[tokio::test]
async fn rtu_bus_follows_a_by_id_link_that_is_re_pointed_to_another_port() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join("usb-FTDI_USB-RS485_Cable_FT0002-if00-port0");
    let old = SimDevice::new(1);
    old.with_banks(|b| b.set_holding(0, &[10]));
    let _first = Adapter::plug(&link, vec![old]);
    let run = Running::start(
        rtu_bus(link.clone()),
        vec![device(
            "meter",
            "rtu0",
            1,
            50,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until(
        "a reading from the first port",
        Duration::from_secs(10),
        || run.sink.first_reading_at("meter", "v", &Value::Int(10)),
    )
    .await;
    let new = SimDevice::new(1);
    new.with_banks(|b| b.set_holding(0, &[20]));
    let _second = Adapter::plug(&link, vec![new]);
    wait_until(
        "a reading from the second port",
        Duration::from_secs(10),
        || run.sink.first_reading_at("meter", "v", &Value::Int(20)),
    )
    .await;
    let values = run.sink.values("meter", "v");
    let switched = values.iter().position(|v| *v == Value::Int(20)).unwrap();
    assert!(
        values[switched..].iter().all(|v| *v == Value::Int(20)),
        "no reading from the old port after the switch: {values:?}"
    );
    run.stop().await;
}
