//! The agent under test: the release binary (`fieldlink run`) as a child process on a config
//! of the scenario's, stopped the way systemd stops it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct AgentProc {
    child: Child,
    dir: tempfile::TempDir,
}

impl AgentProc {
    pub fn start(config: &str, dir: tempfile::TempDir) -> AgentProc {
        let agent = AgentProc::spawn(config, dir, &[]);
        println!("  (agent pid {})", agent.pid());
        agent
    }

    /// [`AgentProc::start`] without a line on stdout (a fleet of them would flood it), with
    /// `env` added to the agent's environment.
    pub fn spawn(config: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> AgentProc {
        let path = dir.path().join("fieldlink.toml");
        std::fs::write(&path, config).unwrap();
        if let Err(e) = fieldlink::config::load(&path) {
            panic!("bench config does not load:\n{e}\n{config}");
        }
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        // FIELDLINK_BENCH_AGENT: another build of the agent (e.g. one with symbols, to profile).
        let binary = std::env::var_os("FIELDLINK_BENCH_AGENT")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_fieldlink").into());
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("MALLOC_ARENA_MAX")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the fieldlink binary");
        AgentProc { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait: the agent's own clean shutdown.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
