//! A real mosquitto broker on a free loopback port, stopped when dropped.
//!
//! [`Options`] add mosquitto.conf lines (an ACL, `max_packet_size`, `retain_available
//! false`, …) and persistence; [`Broker::restart`] brings the same broker back on the same
//! port after a kill (which loses what it did not persist) or a clean stop (which saves it).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port for a peer that cannot report the port it bound (mosquitto): free now, and below
/// the kernel's ephemeral range, so that no outgoing connection of a test running in
/// parallel can be given it before the peer binds it (or while a restarted broker is away),
/// as happens with a port from `bind(0)`.
pub fn listen_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    loop {
        let port = fastrand::u16(10_000..low.max(10_001));
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts `cmd` (a mosquitto) and waits until it listens on `port`. `Err` if it exited first
/// (its port was taken after all), with what it said.
pub fn spawn_listening(cmd: &mut Command, port: u16) -> Result<Child, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let start = Instant::now();
    loop {
        // A connection alone does not prove the listener is ours: a peer of a test running
        // in parallel (a TCP sim, another suite's broker) can take the port between
        // `listen_port` and mosquitto's bind; mosquitto then exits ("Address already in use")
        // while the connection succeeds, and the test talks to the wrong peer (seen as a
        // missing SUBACK in tests/signals.rs).
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && owns_listener(child.id(), port).unwrap_or(true)
        {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "mosquitto exited ({status}) before listening on {port}"
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto not accepting connections on {port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (the socket's inode
/// from /proc/net/tcp among the process' descriptors). `None` where /proc cannot say (a
/// descriptor table this user may not read): then the connection has to do. An empty table
/// (a process exiting) says no.
fn owns_listener(pid: u32, port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            // State 0A is LISTEN; field 9 is the socket's inode.
            if local_port != port || *f.get(3)? != "0A" {
                return None;
            }
            Some(format!("socket:[{}]", f.get(9)?))
        })
        .collect();
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
        // Gone, or a zombie (which holds no descriptors): not listening.
        Err(_) => return Some(false),
    };
    Some(
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str())),
    )
}

/// How a broker is configured beyond the listener.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep retained messages across a clean stop (`persistence true`, saved on SIGTERM).
    pub persistence: bool,
    /// More mosquitto.conf lines, as is.
    pub extra: Vec<String>,
}

pub struct Broker {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    options: Options,
}

pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run the README's test command, which installs it");
}

impl Broker {
    /// Starts mosquitto on a free port and waits until it accepts connections.
    pub fn start() -> Broker {
        Broker::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto started as root drops to its own user: it must be able to read the
        // files a test puts here (an ACL) and to write its persistence file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut broker = Broker {
            port: listen_port(),
            child: None,
            dir,
            options,
        };
        // A port is only reserved once mosquitto binds it: should another test have taken
        // it meanwhile, take another.
        for _ in 0..5 {
            match broker.try_spawn() {
                Ok(()) => return broker,
                Err(e) => {
                    eprintln!("{e}; trying another port");
                    broker.port = listen_port();
                }
            }
        }
        panic!("mosquitto could not listen on any of 5 free ports");
    }

    /// A folder the broker may read (e.g. for an `acl_file` written before starting it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts mosquitto again on its port (after a kill or a stop).
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}: the broker could not come back on its port");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        writeln!(
            f,
            "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\nlog_type warning\nmax_queued_messages 100000\nmax_inflight_messages 0",
            self.port
        )
        .unwrap();
        if self.options.persistence {
            writeln!(
                f,
                "persistence true\npersistence_location {}/",
                self.dir.path().display()
            )
            .unwrap();
        } else {
            writeln!(f, "persistence false").unwrap();
        }
        for line in &self.options.extra {
            writeln!(f, "{line}").unwrap();
        }
        drop(f);
        let mut cmd = Command::new(mosquitto_bin());
        cmd.arg("-c").arg(&conf);
        self.child = Some(spawn_listening(&mut cmd, self.port)?);
        Ok(())
    }

    /// Kills the broker (SIGKILL): its sessions, and retained messages it did not persist,
    /// are gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker cleanly (SIGTERM): with persistence it saves its retained messages
    /// (and, mosquitto 2.0.11, publishes its clients' wills first).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still ours.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    /// Starts a fresh broker on the same port after `kill` (killing it first if needed).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stops the broker cleanly and starts it again on the same port.
    pub fn restart_cleanly(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The running mosquitto's pid (None while it is down), to read its cost from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
