//! Logging: journald when `JOURNAL_STREAM` matches stderr, readable stderr otherwise.
//!
//! Owns the global `tracing` subscriber and nothing else: it never decides *what* is logged.
//! Under systemd, stderr is connected to the journal and systemd sets `JOURNAL_STREAM=dev:ino`
//! to that stream's device and inode; only when fd 2 still is that stream (a shell redirect
//! or a pipe to `logger` would replace it) do we talk to journald natively, so that the
//! structured fields of an event (`device`, `bus`, `point`, `error_kind`, ...) become journal
//! fields (`DEVICE=`, `BUS=`, `POINT=`, `ERROR_KIND=`; `journalctl -u fieldlink DEVICE=meter1`)
//! and levels become syslog priorities (error = 3, warn = 4, info = 6, debug/trace = 7).
//! Everywhere else: a human-readable line format on stderr, without colours unless stderr is
//! a terminal.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The identifier journald files our lines under (`journalctl -t fieldlink`); the default
/// (argv\[0\]) would change with the install path or a qemu runner in front.
const SYSLOG_IDENTIFIER: &str = "fieldlink";

/// Where log lines go, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Sets up logging for the long-running agent (`fieldlink run`, `fieldlink demo`).
///
/// `level` is an `EnvFilter` directive from the config (`"info"`, `"fieldlink=debug,warn"`);
/// `RUST_LOG`, when set, wins. Journald is used when [`journal_stream_is_stderr`] says so;
/// if its socket cannot be opened we fall back to stderr and say why.
pub fn init(level: &str) -> anyhow::Result<()> {
    init_returning_sink(level).map(|_| ())
}

/// [`init`], telling where the lines go (for a start-up message or a test).
pub fn init_returning_sink(level: &str) -> anyhow::Result<Sink> {
    let filter = filter(level)?;
    if journal_stream_is_stderr() {
        match journald_layer() {
            Ok(journald) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .try_init()
                    .context("a logger was already installed in this process")?;
                return Ok(Sink::Journald);
            }
            Err(e) => {
                install_stderr(filter, true)?;
                tracing::warn!(
                    error = %e,
                    "JOURNAL_STREAM names stderr but the journald socket is unusable; logging to stderr"
                );
                return Ok(Sink::Stderr);
            }
        }
    }
    install_stderr(filter, true)?;
    Ok(Sink::Stderr)
}

/// Sets up logging for short commands (`check`, `read`): warnings and errors only, on stderr,
/// without timestamps, so that their stdout output stays the point. `RUST_LOG` still wins.
pub fn init_for_cli() -> anyhow::Result<()> {
    install_stderr(filter("warn")?, false)
}

fn filter(level: &str) -> anyhow::Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => EnvFilter::try_new(&directive)
            .with_context(|| {
                format!(
                    "RUST_LOG={directive:?} is not a valid log filter; use e.g. RUST_LOG=info or RUST_LOG=fieldlink=debug, or unset it"
                )
            }),
        _ => EnvFilter::try_new(level).with_context(|| {
            format!(
                "log level {level:?} in [log] is not a valid filter; use e.g. \"info\" or \"fieldlink=debug,warn\""
            )
        }),
    }
}

/// tracing-journald maps INFO to Notice (5) by default; journald users filter on info = 6
/// (`journalctl -p info` shows both, but `-p notice` should not show every reading).
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        // No "F_" prefix: our field names are few and plain, and `DEVICE=meter1` is what an
        // operator types. None of them collides with journald's own (MESSAGE, PRIORITY, CODE_*).
        .with_field_prefix(None)
        .with_priority_mappings(priorities())
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string()))
}

fn install_stderr(filter: EnvFilter, with_time: bool) -> anyhow::Result<()> {
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if with_time {
        registry.with(fmt).try_init()
    } else {
        registry.with(fmt.without_time()).try_init()
    };
    result.context("a logger was already installed in this process")
}

/// True when `JOURNAL_STREAM` is set and names the file fd 2 is connected to.
pub fn journal_stream_is_stderr() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(value) = value.to_str() else {
        return false;
    };
    match fd_identity(2) {
        Some((dev, ino)) => journal_stream_matches(value, dev, ino),
        None => false,
    }
}

/// Device and inode of an open file descriptor, as systemd writes them into JOURNAL_STREAM.
fn fd_identity(fd: libc::c_int) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes into the buffer we pass, which is large enough for a `stat`.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstat returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // The field widths differ between targets (u32 on armhf), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// Parses `JOURNAL_STREAM` (`"<device>:<inode>"`, both decimal, as systemd.exec(5) documents)
/// and compares it with stderr's identity. Anything malformed means "no".
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    match (d.parse::<u64>(), i.parse::<u64>()) {
        (Ok(d), Ok(i)) => d == dev && i == ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_journal_stream_naming_our_device_and_inode_matches() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(journal_stream_matches(
            "64769:9007199254740993",
            64769,
            9007199254740993
        ));
    }

    #[test]
    fn a_journal_stream_of_another_file_does_not_match() {
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
    }

    #[test]
    fn a_malformed_journal_stream_never_matches() {
        for bad in [
            "", ":", "8", "8:", ":1234", "8:12x", "a:b", "-8:1234", "8:1234:5",
        ] {
            assert!(!journal_stream_matches(bad, 8, 1234), "{bad:?} matched");
        }
    }

    #[test]
    fn the_identity_of_an_open_file_is_its_device_and_inode() {
        use std::os::unix::fs::MetadataExt;
        let file = tempfile::tempfile().unwrap();
        let meta = file.metadata().unwrap();
        let (dev, ino) = fd_identity(file.as_raw_fd()).unwrap();
        assert_eq!((dev, ino), (meta.dev(), meta.ino()));
        let value = format!("{dev}:{ino}");
        assert!(journal_stream_matches(&value, dev, ino));
    }

    #[test]
    fn journal_priorities_are_the_syslog_numbers_operators_filter_on() {
        let p = priorities();
        assert_eq!(
            [p.error, p.warn, p.info, p.debug, p.trace].map(|p| p as u8 - b'0'),
            [3, 4, 6, 7, 7]
        );
    }

    #[test]
    fn a_closed_descriptor_has_no_identity() {
        assert_eq!(fd_identity(-1), None);
    }

    #[test]
    fn a_bad_level_says_what_to_write_instead() {
        // Only meaningful when RUST_LOG does not override the config's level.
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        let err = filter("info,[[[").unwrap_err();
        assert!(format!("{err:#}").contains("not a valid filter"), "{err:#}");
        assert!(filter("fieldlink=debug,warn").is_ok());
    }
}
