//! What every serial bus (Modbus RTU and serial_line alike) does about its port coming and
//! going: open it by path with an error that says what to check, tell whether the path still
//! names the node that was opened, notice a hang-up while the line is idle, decide when a
//! lost port is worth opening again, and tell the operator once each way.
//!
//! Owns no port and no task: a bus keeps its own port and asks [`PortWatch`]. Never reads or
//! writes the line, never touches devices or samples.
//!
//! The policy (issue 6 item 2): a read error, end of file (a hung-up tty reads `Ok(0)`
//! forever), a hang-up seen while idle, or the path no longer naming the node that was opened
//! (removed, or a udev by-id link re-pointed) ends the session: the bus drops the port at
//! once, because a held fd makes a re-plugged adapter come back under a new name. While down,
//! the path is looked at every [`WATCH_PERIOD`] and a node that reappears is opened at the
//! next look whatever the backoff; failed opens of a node that exists back off from
//! [`OPEN_BACKOFF_MIN`] to [`OPEN_BACKOFF_MAX`]. Both bounds keep the pickup well inside 2 s.
//! One warning when the port goes, one info when a reopened port works again; flapping in
//! between logs at debug only.

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tracing::{debug, info, warn};

use crate::config::{Parity, SerialSettings};
use crate::poll::backoff;

/// How often a bus looks for its missing device node, and checks the node of an open port.
pub const WATCH_PERIOD: Duration = Duration::from_millis(250);
/// Backoff between failed opens of a node that exists (udev not done with permissions yet,
/// port busy, or a port that hangs up right after opening).
pub const OPEN_BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const OPEN_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a path names: the node's (device, inode, rdev), symlinks followed.
pub type NodeId = (u64, u64, u64);

pub fn node_identity(path: &Path) -> Option<NodeId> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.rdev()))
}

/// Opens and configures the port (exclusive, as tokio-serial does by default).
pub fn open(s: &SerialSettings) -> tokio_serial::Result<SerialStream> {
    use tokio_serial::{DataBits, FlowControl, StopBits};
    tokio_serial::new(s.path.to_string_lossy(), s.baud)
        .data_bits(match s.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            _ => DataBits::Eight,
        })
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if s.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .flow_control(FlowControl::None)
        .open_native_async()
}

/// Why `path` could not be opened, and what to do about it.
pub fn describe_open_error(e: &tokio_serial::Error, path: &Path) -> String {
    let shown = path.display();
    if node_identity(path).is_none() {
        return format!(
            "{shown} does not exist (adapter unplugged? check the cable and `ls -l \
             /dev/serial/by-id/`, and name the port by its stable /dev/serial/by-id/... path)"
        );
    }
    match e.kind() {
        tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => format!(
            "permission denied opening {shown} ({e}): run fieldlink as a member of the dialout group"
        ),
        _ if e.description.contains("EBUSY") || e.description.contains("busy") => format!(
            "cannot open {shown} ({e}): another program holds the port (ModemManager, a second \
             fieldlink, a terminal)"
        ),
        _ => format!(
            "cannot open {shown} ({e}): check the path and the serial settings (baud, data \
             bits, parity, stop bits)"
        ),
    }
}

/// True when the tty behind `port` has hung up (adapter unplugged, pty master closed) or
/// the fd is broken. Does not wait and does not consume input.
pub fn hung_up(port: &impl AsRawFd) -> bool {
    let mut poll = libc::pollfd {
        fd: port.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout; the fd belongs to `port`, borrowed for the
    // whole call. POLLHUP, POLLERR and POLLNVAL are reported whatever `events` asks.
    let rc = unsafe { libc::poll(&mut poll, 1, 0) };
    rc > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// The lifecycle bookkeeping of one bus's port: when to look for it, whether to open it,
/// whether the open one is still the node the path names, and the two log lines.
#[derive(Debug)]
pub struct PortWatch {
    bus: String,
    path: PathBuf,
    /// A warning said the port is down; the next working session says it is back.
    down_reported: bool,
    /// Sessions in a row that failed to open or to work (drives the backoff); 0 = open at
    /// once.
    failures: u32,
    /// Before this, an existing node is not opened again (unless it reappeared).
    earliest: Instant,
    /// The node was missing at some look since the port was lost.
    was_missing: bool,
    next_look: Instant,
    /// The node the open port was opened on.
    opened: Option<NodeId>,
}

impl PortWatch {
    pub fn new(bus: &str, path: &Path) -> Self {
        let now = Instant::now();
        PortWatch {
            bus: bus.to_owned(),
            path: path.to_path_buf(),
            down_reported: false,
            failures: 0,
            earliest: now,
            was_missing: false,
            next_look: now,
            opened: None,
        }
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next instant [`look`](Self::look) is worth calling while the port is down.
    pub fn next_look(&self) -> Instant {
        self.next_look
    }

    /// Looks at the path once (and schedules the next look): true when the port should be
    /// opened now. A node that reappears is a new device: it is opened whatever the backoff.
    pub fn look(&mut self) -> bool {
        let now = Instant::now();
        self.next_look = now + WATCH_PERIOD;
        if self.failures == 0 {
            return true;
        }
        match node_identity(&self.path) {
            None => {
                self.was_missing = true;
                false
            }
            Some(_) => self.was_missing || now >= self.earliest,
        }
    }

    /// The port was just opened: remember which node it is.
    pub fn opened(&mut self) {
        self.opened = node_identity(&self.path);
    }

    /// `Err(why)` when the path no longer names the node the open port was opened on.
    pub fn check_node(&self) -> Result<(), String> {
        match node_identity(&self.path) {
            None => Err(format!(
                "the device node {} disappeared",
                self.path.display()
            )),
            id if id != self.opened => Err(format!(
                "{} now names another device (re-plugged)",
                self.path.display()
            )),
            _ => Ok(()),
        }
    }

    /// The port could not be opened, or an open one was lost (the bus has dropped it):
    /// warns once per outage, backs off, and looks again after [`WATCH_PERIOD`].
    pub fn lost(&mut self, why: &str) {
        let path = self.path.display();
        if self.down_reported {
            debug!(bus = %self.bus, "serial port {path} still unusable: {why}");
        } else {
            warn!(bus = %self.bus, "serial port {path} is down: {why}; its devices are offline until it is back (looking for it every {WATCH_PERIOD:?})");
            self.down_reported = true;
        }
        self.failures = self.failures.saturating_add(1);
        let now = Instant::now();
        self.earliest =
            now + backoff::exponential(self.failures, OPEN_BACKOFF_MIN, OPEN_BACKOFF_MAX);
        self.was_missing = false;
        self.next_look = now + WATCH_PERIOD;
        self.opened = None;
    }

    /// The open port works (a good answer, or a while without trouble): the backoff starts
    /// over, and an outage that was reported is reported over.
    pub fn settled(&mut self) {
        self.failures = 0;
        if self.down_reported {
            info!(bus = %self.bus, "serial port {} is back", self.path.display());
            self.down_reported = false;
        }
    }

    /// An outage was reported and has not been reported over.
    pub fn is_down(&self) -> bool {
        self.down_reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_missing_node_is_opened_at_the_first_look_after_it_reappears_whatever_the_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usb-x-if00");
        let mut watch = PortWatch::new("b", &path);
        assert!(watch.look(), "the first try is at once");
        for _ in 0..10 {
            watch.lost("gone");
        }
        assert!(watch.is_down());
        tokio::time::advance(WATCH_PERIOD).await;
        assert!(!watch.look(), "missing: not worth opening");
        std::fs::write(&path, b"").unwrap();
        assert!(watch.look(), "reappeared: open now, backoff or not");
        watch.opened();
        assert!(watch.check_node().is_ok());
        // Another node at the same path (both exist at once, so their inodes differ).
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(
            watch.check_node().unwrap_err().contains("another device"),
            "a new node at the same path is another device"
        );
        watch.settled();
        assert!(!watch.is_down());
    }

    #[tokio::test(start_paused = true)]
    async fn an_existing_node_that_fails_to_open_is_retried_with_backoff_up_to_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttyX");
        std::fs::write(&path, b"").unwrap();
        let mut watch = PortWatch::new("b", &path);
        for _ in 0..5 {
            watch.lost("busy");
        }
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!watch.look());
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(watch.look(), "never more than OPEN_BACKOFF_MAX");
    }
}
