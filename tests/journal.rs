//! Where the real binary's log lines go: the JOURNAL_STREAM decision is made on the file
//! descriptor the agent really has as stderr, so these tests give it a file whose device and
//! inode they know.

mod support;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

fn config_with_unreachable_broker(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("fieldlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"journal-test\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            support::free_port()
        ),
    )
    .unwrap();
    config
}

/// Starts `fieldlink run` with `stderr` as its fd 2 and `journal_stream` in the environment.
fn start_agent(config: &Path, stderr: &File, journal_stream: &str) -> Child {
    support::bin::agent_command()
        .args(["run", "--config"])
        .arg(config)
        .env("JOURNAL_STREAM", journal_stream)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .expect("start fieldlink")
}

fn stop(mut agent: Child) {
    // SAFETY: kill(2) on a child we spawned and have not waited for yet.
    unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
    support::wait_until_blocking("agent exit", Duration::from_secs(15), || {
        agent.try_wait().unwrap()
    });
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
}

#[test]
fn a_journal_stream_naming_stderr_selects_journald_and_falls_back_to_stderr_without_it() {
    if Path::new(JOURNALD_SOCKET).exists() {
        // On a host with a journal the lines go there; the fallback cannot be observed.
        eprintln!("skipped: {JOURNALD_SOCKET} exists");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_unreachable_broker(dir.path());
    let log_path = dir.path().join("stderr.log");
    let log = File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let agent = start_agent(&config, &log, &format!("{}:{}", meta.dev(), meta.ino()));

    let text = support::wait_until_blocking("start-up logged", Duration::from_secs(30), || {
        let text = read(&log_path);
        text.contains("fieldlink started").then_some(text)
    });
    stop(agent);
    assert!(
        text.contains("journald socket is unusable"),
        "the agent did not notice JOURNAL_STREAM named its stderr:\n{text}"
    );
    assert!(!text.contains('\x1b'), "colour codes in a file:\n{text}");
}

#[test]
fn a_journal_stream_of_another_file_keeps_plain_stderr_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_unreachable_broker(dir.path());
    let log_path = dir.path().join("stderr.log");
    let log = File::create(&log_path).unwrap();
    // What a service's child would inherit after its stderr was redirected elsewhere.
    let agent = start_agent(&config, &log, "1:1");

    let text = support::wait_until_blocking("start-up logged", Duration::from_secs(30), || {
        let text = read(&log_path);
        text.contains("fieldlink started").then_some(text)
    });
    stop(agent);
    assert!(!text.contains("journald"), "{text}");
    assert!(
        text.contains(" INFO "),
        "plain level names expected:\n{text}"
    );
    assert!(!text.contains('\x1b'), "colour codes in a file:\n{text}");
}

/// Under a private mount namespace (root only) a fake journald socket sits at the fixed path
/// tracing-journald writes to; the agent's start-up record must arrive with plain field
/// names, syslog priority 6 for info, and our identifier.
#[test]
fn under_journald_records_carry_fields_and_syslog_priorities() {
    let root = unsafe { libc::geteuid() } == 0;
    let have_tools = ["unshare", "python3"].iter().all(|t| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !root || !have_tools {
        eprintln!("skipped: needs root, unshare and python3 for a private /run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_unreachable_broker(dir.path());
    let records = dir.path().join("journal.records");
    let agent = support::bin::agent_command();
    let agent_words: Vec<String> = std::iter::once(agent.get_program())
        .chain(agent.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    // The receiver appends each datagram (journald's native format), prefixed by its length.
    let receiver = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
         s.bind('/run/systemd/journal/socket')\n\
         open('{ready}','w').close()\n\
         f=open('{records}','ab',0)\n\
         while True:\n    d=s.recv(65536)\n    f.write(struct.pack('<I',len(d))+d)\n",
        ready = dir.path().join("ready").display(),
        records = records.display(),
    );
    std::fs::write(dir.path().join("receiver.py"), receiver).unwrap();
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal\n\
         python3 {dir}/receiver.py & rpid=$!\n\
         while [ ! -e {dir}/ready ]; do sleep 0.05; done\n\
         exec 2>{dir}/stderr.log\n\
         ino=$(stat -L -c '%d:%i' /proc/self/fd/2)\n\
         JOURNAL_STREAM=$ino RUST_LOG=info timeout -s TERM 20 {agent} run --config {config} &\n\
         apid=$!\n\
         while ! grep -aq 'fieldlink started' {records} 2>/dev/null; do sleep 0.05; done\n\
         kill -TERM $apid; wait $apid || true; kill $rpid",
        dir = dir.path().display(),
        agent = agent_words.join(" "),
        config = config.display(),
        records = records.display(),
    );
    let status = std::process::Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .status()
        .unwrap();
    let raw = std::fs::read(&records).unwrap_or_default();
    let all = journal_records(&raw);
    assert!(
        status.success(),
        "journald harness failed ({status}); got {all:?}"
    );
    let started = all
        .iter()
        .find(|r| r.iter().any(|f| f == "MESSAGE=fieldlink started"))
        .unwrap_or_else(|| panic!("no start-up record in {all:?}"));
    for want in [
        "PRIORITY=6",
        "SYSLOG_IDENTIFIER=fieldlink",
        "GATEWAY=journal-test",
        "DEVICES=0",
    ] {
        assert!(
            started.iter().any(|f| f == want),
            "missing {want} in record {started:?}"
        );
    }
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(
        !stderr.contains("fieldlink started"),
        "the record went to stderr as well:\n{stderr}"
    );
}

/// Splits the receiver's file into datagrams, and each datagram (journald's native protocol:
/// `KEY=value\n`, or `KEY\n` + 64-bit little-endian length + value + `\n`) into `KEY=value`.
fn journal_records(mut raw: &[u8]) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    while raw.len() >= 4 {
        let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        let mut d = &raw[4..4 + len];
        raw = &raw[4 + len..];
        let mut fields = Vec::new();
        while !d.is_empty() {
            let end = d.iter().position(|&b| b == b'\n' || b == b'=').unwrap();
            let key = String::from_utf8_lossy(&d[..end]).into_owned();
            if d[end] == b'=' {
                let rest = &d[end + 1..];
                let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                fields.push(format!("{key}={}", String::from_utf8_lossy(&rest[..nl])));
                d = &rest[(nl + 1).min(rest.len())..];
            } else {
                let n = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &d[end + 9..end + 9 + n];
                fields.push(format!("{key}={}", String::from_utf8_lossy(value)));
                d = &d[(end + 10 + n).min(d.len())..];
            }
        }
        records.push(fields);
    }
    records
}
