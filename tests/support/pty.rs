//! Pseudo-terminal pairs made by socat, reached through symlinks (as udev's
//! /dev/serial/by-id links are), so a test can make a serial port appear and disappear at a
//! fixed path while the agent runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Two linked ptys: bytes written to one end are read at the other. `sim` is for the Modbus
/// peer, `agent` for the agent's config.
pub struct PtyPair {
    pub sim: PathBuf,
    pub agent: PathBuf,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

fn socat_bin() -> &'static str {
    let ok = Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "socat is needed for the serial tests: run the README's test command (`.ci/run`), \
         which installs it"
    );
    "socat"
}

impl PtyPair {
    /// A pair in a fresh tempdir.
    pub fn start() -> PtyPair {
        let dir = tempfile::tempdir().unwrap();
        let mut pair = PtyPair::at(&dir.path().join("sim-tty"), &dir.path().join("agent-tty"));
        pair._dir = Some(dir);
        pair
    }

    /// A pair whose ends are linked at the given paths; returns once both links exist.
    pub fn at(sim: &Path, agent: &Path) -> PtyPair {
        let child = Command::new(socat_bin())
            .arg(format!("pty,raw,echo=0,link={}", sim.display()))
            .arg(format!("pty,raw,echo=0,link={}", agent.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        let pair = PtyPair {
            sim: sim.to_path_buf(),
            agent: agent.to_path_buf(),
            child: Some(child),
            _dir: None,
        };
        // `exists` follows the link: true only once the pty behind it is there too.
        super::wait_until_blocking("socat pty links", Duration::from_secs(10), || {
            (pair.sim.exists() && pair.agent.exists()).then_some(())
        });
        pair
    }

    /// Ends socat: both ptys hang up and the links go away, as when an adapter is pulled.
    pub fn unplug(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM lets socat remove its links; SIGKILL would leave them dangling.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.sim);
        let _ = std::fs::remove_file(&self.agent);
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.unplug();
    }
}
