//! The real `fieldlink` binary as a child process: a generated config in a tempdir, stderr
//! captured line by line for assertions, signals sent with libc, exits awaited with a deadline.
//!
//! `FIELDLINK_TEST_RUNNER` (e.g. `qemu-aarch64-static -L /usr/aarch64-linux-gnu`) is put in
//! front of the binary (by `support::bin`), so the same suites run a cross-built agent under
//! emulation.
//! Owns nothing but the child process and its tempdir; never touches the peers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent binary cargo built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(super::bin::AGENT_BIN)
}

/// A command for the agent with `args`, behind the cross runner when there is one
/// (`FIELDLINK_TEST_RUNNER`, see [`super::bin::agent_command`]).
pub fn command(args: &[&str]) -> Command {
    let mut cmd = super::bin::agent_command();
    cmd.args(args);
    // Debug logs make a failed test's dump useful; a test may override.
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,fieldlink=debug");
    }
    // Never log to a journald socket from a test, even when run from a systemd unit.
    cmd.env_remove("JOURNAL_STREAM");
    cmd.env_remove("NOTIFY_SOCKET");
    cmd
}

/// Lines an output stream produced so far, filled by a reader thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn capture(stream: impl std::io::Read + Send + 'static, echo: &'static str) -> Lines {
        let lines = Lines::default();
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("FIELDLINK_TEST_ECHO").is_some() {
                    eprintln!("[{echo}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    pub fn any(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(|l| pred(l))
    }
}

/// A writable tempdir holding the config (and anything else a test wants next to it).
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl ConfigDir {
    pub fn new(toml: &str) -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fieldlink.toml");
        std::fs::write(&path, toml).unwrap();
        ConfigDir { dir, path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// A running `fieldlink run --config <generated file>`.
pub struct Agent {
    child: Child,
    pub stderr: Lines,
    pub stdout: Lines,
    exit: Option<ExitStatus>,
    pub config: ConfigDir,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    earlier_stderr: Vec<String>,
}

/// Points `cmd` at `dir` as its state directory, removing the fresh (still empty) one that
/// [`command`] made for it, so polling helpers do not litter the temp dir.
fn use_state_dir(cmd: &mut Command, dir: &Path) {
    let fresh = cmd
        .get_envs()
        .find(|(key, _)| *key == "STATE_DIRECTORY")
        .and_then(|(_, value)| value.map(PathBuf::from));
    if let Some(fresh) = fresh.filter(|f| f != dir) {
        let _ = std::fs::remove_dir(fresh);
    }
    cmd.env("STATE_DIRECTORY", dir);
}

/// Spawns `fieldlink run --config <config> <extra_args>` with the config's folder as its
/// state directory; returns the child and its captured stdout and stderr.
fn spawn_run(
    config: &ConfigDir,
    extra_args: &[String],
    env: &[(String, String)],
) -> (Child, Lines, Lines) {
    let mut args = vec!["run", "--config", config.path_str()];
    args.extend(extra_args.iter().map(String::as_str));
    let mut cmd = command(&args);
    use_state_dir(&mut cmd, config.dir.path());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
    let stderr = Lines::capture(child.stderr.take().unwrap(), "agent stderr");
    let stdout = Lines::capture(child.stdout.take().unwrap(), "agent stdout");
    (child, stdout, stderr)
}

impl Agent {
    /// Writes `toml` to a fresh tempdir and starts the agent on it.
    pub fn start(toml: &str) -> Agent {
        Agent::start_with(ConfigDir::new(toml), &[])
    }

    /// Starts `fieldlink run --config <config>`, plus `extra_args`.
    pub fn start_with(config: ConfigDir, extra_args: &[&str]) -> Agent {
        Agent::start_with_env(config, extra_args, &[])
    }

    /// Like [`Agent::start_with`], with more environment (kept for [`Agent::restart`]), e.g.
    /// an `LD_PRELOAD` that fakes the wall clock.
    pub fn start_with_env(config: ConfigDir, extra_args: &[&str], env: &[(&str, &str)]) -> Agent {
        // A typo in a test's config should fail here, saying so, not as a timeout later.
        if let Err(errors) = fieldlink::config::load(&config.path) {
            panic!(
                "the test's own config does not load:\n{errors}\n{}",
                std::fs::read_to_string(&config.path).unwrap_or_default()
            );
        }
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, stdout, stderr) = spawn_run(&config, &extra_args, &env);
        Agent {
            child,
            stderr,
            stdout,
            exit: None,
            config,
            extra_args,
            env,
            earlier_stderr: Vec::new(),
        }
    }

    /// Starts the agent again on the same config and state directory (its buffer), after it
    /// exited or was killed: what a supervisor does after a crash or a power cut. The
    /// previous run's stderr moves to [`Agent::earlier_stderr`].
    pub fn restart(&mut self) {
        assert!(
            self.try_exit().is_some(),
            "restart() needs the previous agent to have exited (sigkill or wait_exit first)"
        );
        let (child, stdout, stderr) = spawn_run(&self.config, &self.extra_args, &self.env);
        self.earlier_stderr.extend(self.stderr.snapshot());
        self.child = child;
        self.stdout = stdout;
        self.stderr = stderr;
        self.exit = None;
    }

    /// Stderr lines of the runs before the last [`Agent::restart`].
    pub fn earlier_stderr(&self) -> &[String] {
        &self.earlier_stderr
    }

    /// The state directory the agent runs with (`STATE_DIRECTORY`, holding `buffer.db`).
    pub fn state_dir(&self) -> &Path {
        self.config.dir.path()
    }

    /// `fieldlink buffer stats --config <this agent's config>` on this agent's state
    /// directory (it may be running: the command only reads).
    pub async fn buffer_stats(&self) -> Finished {
        let cmd = self.command_beside(&["buffer", "stats", "--config", self.config.path_str()]);
        run_command_to_end(cmd, "buffer stats", Duration::from_secs(20)).await
    }

    /// `fieldlink <args>` on this agent's state directory, e.g. a second `run`.
    pub fn command_beside(&self, args: &[&str]) -> Command {
        let mut cmd = command(args);
        use_state_dir(&mut cmd, self.state_dir());
        cmd
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; the child is not reaped until we wait on
        // it, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// `kill -9`: the agent gets no chance to say goodbye.
    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait().map(|s| self.exit = Some(s));
    }

    /// The exit status if the agent has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().unwrap();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the agent to exit; panics (with its stderr) after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            if start.elapsed() > deadline {
                panic!(
                    "agent still running {deadline:?} after being asked to stop; stderr:\n{}",
                    self.stderr.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a stderr line satisfies `pred`; returns that line.
    pub async fn wait_stderr(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let lines = self.stderr.clone();
        let start = Instant::now();
        loop {
            if let Some(line) = lines.snapshot().into_iter().find(|l| pred(l)) {
                return line;
            }
            if start.elapsed() > deadline {
                panic!(
                    "timed out after {deadline:?} waiting for agent stderr: {what}; stderr:\n{}",
                    self.stderr.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // A failing test shows what the agent said; a passing one stays quiet.
            if !self.earlier_stderr.is_empty() {
                eprintln!(
                    "---- agent stderr, earlier runs ----\n{}",
                    self.earlier_stderr.join("\n")
                );
            }
            eprintln!(
                "---- agent stderr ({}) ----\n{}\n---- end agent stderr ----",
                self.config.path.display(),
                self.stderr.text()
            );
        }
    }
}

/// Output of a one-shot command (`check`, `read`, `demo`).
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `fieldlink <args>` to completion, killing it and panicking after `deadline`.
pub async fn run_to_end(args: &[&str], deadline: Duration) -> Finished {
    run_command_to_end(command(args), &args.join(" "), deadline).await
}

/// Runs `cmd` (from [`command`], possibly with more environment) to completion, killing it
/// and panicking after `deadline`; `what` names it in the panic.
pub async fn run_command_to_end(mut cmd: Command, what: &str, deadline: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
    let stdout = Lines::capture(child.stdout.take().unwrap(), "stdout");
    let stderr = Lines::capture(child.stderr.take().unwrap(), "stderr");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`fieldlink {what}` still running after {deadline:?}; stdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The reader threads end at EOF, just after the exit; give them that moment.
    let eof_deadline = Instant::now() + Duration::from_secs(2);
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = (stdout.snapshot().len(), stderr.snapshot().len());
        if now == last || Instant::now() > eof_deadline {
            break;
        }
        last = now;
    }
    Finished {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

/// The `[gateway]` and `[mqtt]` sections every test config starts with: a unique gateway id,
/// a unique prefix (returned), keep-alive 2 s.
pub fn head(broker_port: u16, prefix: &str) -> String {
    let id = super::unique("gw").replace('.', "-");
    format!(
        r#"[gateway]
id = "{id}"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
keep_alive = "2s"
prefix = "{prefix}"
"#
    )
}

/// A unique topic prefix for one test.
pub fn prefix(test: &str) -> String {
    format!("t/{}", super::unique(test))
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
