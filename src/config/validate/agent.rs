//! The agent's own sections: `[gateway]`, `[log]` and `[buffer]`.

use std::path::{Path, PathBuf};

use toml_edit::Item;

use super::engine::{span_of, Checker, FileId};
use crate::config::limits;
use crate::config::raw::{RawBuffer, RawGateway, RawLog};
use crate::config::types::{Buffer, Durability, Gateway, Log, Replay, WhenFull, MAX_NAME_CHARS};
use crate::config::units::format_duration;

impl Checker {
    pub(super) fn gateway(&mut self, file: FileId, item: &Item) -> Option<Gateway> {
        let d = self.decode::<RawGateway>(file, item, "[gateway]", &[])?;
        let id = self.require(&d, &d.value.id, "id", "id = \"gw-0001\"")?;
        let text = id.get_ref();
        if text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.fail(
                file,
                span_of(id),
                format!("gateway id \"{text}\" must be letters, digits, `_` or `-` only (it becomes part of MQTT topics and the client id), e.g. \"gw-0001\""),
            );
            return None;
        }
        let length = text.chars().count();
        if length > MAX_NAME_CHARS {
            self.fail(
                file,
                span_of(id),
                format!("gateway id \"{text}\" is {length} characters long: shorten it to at most {MAX_NAME_CHARS} (it becomes a topic level and part of the MQTT client id)"),
            );
            return None;
        }
        Some(Gateway { id: text.clone() })
    }

    pub(super) fn log(&mut self, file: FileId, item: &Item) -> Option<Log> {
        let d = self.decode::<RawLog>(file, item, "[log]", &[])?;
        let Some(level) = &d.value.level else {
            return Some(Log::default());
        };
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level.get_ref()) {
            self.fail(
                file,
                span_of(level),
                format!("log level \"{}\" is not understood ({e}): use error, warn, info, debug or trace, or a directive such as \"fieldlink=debug,info\"", level.get_ref()),
            );
            return None;
        }
        Some(Log {
            level: level.get_ref().clone(),
        })
    }

    pub(super) fn buffer(&mut self, file: FileId, item: &Item) -> Option<Buffer> {
        let d = self.decode::<RawBuffer>(file, item, "[buffer]", &[])?;
        let raw = &d.value;
        let mut ok = true;
        let mut buffer = Buffer::default();
        if let Some(path) = &raw.path {
            let p = PathBuf::from(path.get_ref());
            // A relative state directory follows the config file, not the service's cwd.
            buffer.path = if p.is_relative() && !p.as_os_str().is_empty() {
                self.files[file]
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(p)
            } else {
                p
            };
        }
        if let Some(v) = &raw.durability {
            match self.choice(
                file,
                v,
                "durability",
                &[
                    ("outage", Durability::Outage),
                    ("always", Durability::Always),
                ],
            ) {
                Some(x) => buffer.durability = x,
                None => ok = false,
            }
        }
        if let Some(v) = &raw.when_full {
            match self.choice(
                file,
                v,
                "when_full",
                &[
                    ("drop_oldest", WhenFull::DropOldest),
                    ("drop_newest", WhenFull::DropNewest),
                ],
            ) {
                Some(x) => buffer.when_full = x,
                None => ok = false,
            }
        }
        if let Some(v) = &raw.replay {
            match self.choice(
                file,
                v,
                "replay",
                &[("all", Replay::All), ("latest", Replay::Latest)],
            ) {
                Some(x) => buffer.replay = x,
                None => ok = false,
            }
        }
        if let Some(v) = &raw.commit_interval {
            buffer.commit_interval = v.get_ref().0;
        }
        if let Some(v) = &raw.max_age {
            buffer.max_age = v.get_ref().0;
        }
        if let Some(v) = &raw.max_size {
            buffer.max_size = v.get_ref().0;
        }
        if let Some(v) = &raw.replay_rate {
            match self.int_in(
                file,
                v,
                "replay_rate",
                1..=1_000_000,
                "give readings per second, {range}, or leave it out for no limit",
            ) {
                Some(n) => buffer.replay_rate = Some(n as u32),
                None => ok = false,
            }
        }
        if let Some(v) = &raw.spill_threshold {
            match self.int_in(
                file,
                v,
                "spill_threshold",
                1..=10_000_000,
                "give a number of readings, {range}",
            ) {
                Some(n) => {
                    buffer.spill_threshold = n as usize;
                    buffer.spill_threshold_follows_map = false;
                }
                None => ok = false,
            }
        }
        for (key, message) in buffer_problems(&buffer) {
            let span = match key {
                "path" => raw.path.as_ref().and_then(span_of),
                "commit_interval" => raw.commit_interval.as_ref().and_then(span_of),
                "max_size" => raw.max_size.as_ref().and_then(span_of),
                "max_age" => raw.max_age.as_ref().and_then(span_of),
                "replay_rate" => raw.replay_rate.as_ref().and_then(span_of),
                "spill_threshold" => raw.spill_threshold.as_ref().and_then(span_of),
                _ => None,
            };
            self.fail(file, span, format!("[buffer] `{key}` {message}"));
            ok = false;
        }
        ok.then_some(buffer)
    }
}

/// Every problem with `[buffer]` settings once decoded, as `(key, message)` pairs the loader
/// locates at the keys.
fn buffer_problems(buffer: &Buffer) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if buffer.path.as_os_str().is_empty() {
        problems.push((
            "path",
            "must name a directory, e.g. \"/var/lib/fieldlink\"".to_string(),
        ));
    }
    for (key, value, range) in [
        (
            "commit_interval",
            buffer.commit_interval,
            &limits::COMMIT_INTERVAL,
        ),
        ("max_age", buffer.max_age, &limits::MAX_AGE),
    ] {
        if !range.contains(value) {
            problems.push((
                key,
                format!(
                    "= \"{}\" is out of range: {} must be between {} and {}, e.g. \"{}\"",
                    format_duration(value),
                    range.what,
                    format_duration(range.min),
                    format_duration(range.max),
                    range.example
                ),
            ));
        }
    }
    if buffer.max_size < 1024 * 1024 {
        problems.push((
            "max_size",
            "must be at least 1MiB (SQLite needs room for its own pages)".to_string(),
        ));
    }
    if buffer.replay_rate == Some(0) {
        problems.push((
            "replay_rate",
            "must be at least 1 reading/s; leave it out for no limit".to_string(),
        ));
    }
    if buffer.spill_threshold == 0 {
        problems.push(("spill_threshold", "must be at least 1".to_string()));
    }
    problems
}
