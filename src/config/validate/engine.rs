//! The reusable engine of validation: source files and positions, the problem list, and the
//! error-collecting decoder that turns one TOML table into its `raw` type while reporting
//! **every** key serde rejects, plus the generic checks every section uses (required keys,
//! names, integer and duration ranges, choices among words).
//!
//! Knows no section of the config: the section files (`agent`, `mqtt`, `modbus`,
//! `serial_line`, ...) build on it; it imports none of them.
//!
//! Every message goes through one place ([`Checker::fail`]), which escapes control characters
//! echoed from the file so that each error is one line; a file that is not UTF-8 is reported
//! byte by byte with line and column, as TOML syntax errors are.
//!
//! How all errors are found in one pass although serde stops at the first one: the file is
//! parsed with toml_edit (every key and value keeps its byte span), then each table is
//! decoded on its own into its `raw` type ([`Checker::decode`]). When serde rejects a key, the
//! key is reported, removed, and the table decoded again, until it decodes; so one table
//! reports all of its bad keys, and a bad table never hides its siblings. Range and reference
//! checks then run on whatever decoded, skipping keys already reported so no error is
//! reported twice.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml_edit::{ImDocument, InlineTable, Item, Value};

use super::explanations::{explain, one_line, quoted_list};
use crate::config::limits::DurationRange;
use crate::config::types::{Config, MAX_NAME_CHARS};
use crate::config::units::{format_duration, HumanDuration};

/// Bad bytes reported one by one in a file that is not UTF-8; a binary file would otherwise
/// produce thousands of lines.
const MAX_ENCODING_ERRORS: usize = 10;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: std::path::PathBuf,
    /// 1-based; 0 when the problem has no place in the file (it could not be read).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            // A file name can hold a newline too; the message is already one line.
            let file = one_line(&e.file.display().to_string());
            if e.line == 0 {
                writeln!(f, "{file}: {}", one_line(&e.message))?;
            } else {
                writeln!(f, "{file}:{}:{}: {}", e.line, e.column, e.message)?;
            }
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}

pub(super) type FileId = usize;

pub(super) struct SourceFile {
    pub(super) path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub(super) fn new(path: PathBuf, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and character column of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

struct Problem {
    file: FileId,
    offset: Option<usize>,
    message: String,
}

/// A table decoded into its raw type, with what is needed to report on it afterwards.
pub(super) struct Decoded<T> {
    pub(super) value: T,
    pub(super) file: FileId,
    /// Where the table starts (its `[header]` or `{`): where missing keys are reported.
    pub(super) start: usize,
    /// How the table is named in messages, e.g. "[[device]] \"boiler\"".
    pub(super) what: String,
    /// Keys already reported as wrong: later checks stay silent about them.
    pub(super) reported: BTreeSet<String>,
}

pub(super) fn span_of<T>(v: &Spanned<T>) -> Option<Range<usize>> {
    Some(v.span())
}

/// Collects the files read and every problem found in them. Sections add their checks as
/// `impl Checker` blocks of their own.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) files: Vec<SourceFile>,
    problems: Vec<Problem>,
}

impl Checker {
    /// How many problems were found so far: a section compares it before and after checking
    /// children, to know whether any of them failed.
    pub(super) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    pub(super) fn add_file(&mut self, path: PathBuf, text: String) -> FileId {
        self.files.push(SourceFile::new(path, text));
        self.files.len() - 1
    }

    /// Records a problem. Messages echo values from the file, which TOML escapes may fill
    /// with control characters: they are escaped here, once for all, so that every error
    /// stays on its one line.
    pub(super) fn fail(
        &mut self,
        file: FileId,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            file,
            offset: span.map(|s| s.start),
            message: one_line(&message.into()),
        });
    }

    /// A file that is not UTF-8 (TOML must be): each bad byte sequence is reported where it
    /// is (up to [`MAX_ENCODING_ERRORS`] of them), and the file is not parsed.
    pub(super) fn add_not_utf8(&mut self, path: PathBuf, bytes: &[u8]) {
        // The invalid sequences become U+FFFD, one character each, so the line and column
        // of every byte up to and including each bad one stay those of the file.
        let mut text = String::with_capacity(bytes.len());
        let mut bad: Vec<(usize, &[u8])> = Vec::new();
        for chunk in bytes.utf8_chunks() {
            text.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                bad.push((text.len(), chunk.invalid()));
                text.push(char::REPLACEMENT_CHARACTER);
            }
        }
        let file = self.add_file(path, text);
        for (offset, sequence) in bad.iter().take(MAX_ENCODING_ERRORS) {
            let hex: Vec<String> = sequence.iter().map(|b| format!("0x{b:02X}")).collect();
            let latin1 = match sequence {
                [b] if *b >= 0xA0 => format!(" (\"{}\" in ISO-8859-1)", char::from(*b)),
                _ => String::new(),
            };
            self.fail(
                file,
                Some(*offset..*offset),
                format!(
                    "byte {}{latin1} is not UTF-8, which a TOML file must be: save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 old.toml > new.toml)",
                    hex.join(" ")
                ),
            );
        }
        if let Some((offset, _)) = bad.get(MAX_ENCODING_ERRORS) {
            let more = bad.len() - MAX_ENCODING_ERRORS;
            self.fail(
                file,
                Some(*offset..*offset),
                format!("{more} more byte sequences from here on are not UTF-8 either: is this a text file?"),
            );
        }
    }

    pub(super) fn finish(mut self, config: Option<Config>) -> Result<Config, ConfigErrors> {
        match config {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ => {
                if self.problems.is_empty() {
                    // Unreachable by construction; keep the promise that an Err lists something.
                    self.fail(0, Some(0..0), "the config is invalid");
                }
                self.problems
                    .sort_by_key(|p| (p.file, p.offset.unwrap_or(0)));
                let errors = self
                    .problems
                    .iter()
                    .map(|p| {
                        let source = &self.files[p.file];
                        let (line, column) = source.position(p.offset.unwrap_or(0));
                        ConfigError {
                            file: source.path.clone(),
                            line,
                            column,
                            message: p.message.clone(),
                        }
                    })
                    .collect();
                Err(ConfigErrors(errors))
            }
        }
    }

    pub(super) fn parse(&mut self, file: FileId) -> Option<ImDocument<String>> {
        let text = self.files[file].text.clone();
        match ImDocument::parse(text) {
            Ok(doc) => Some(doc),
            Err(e) => {
                let message = e.message().trim().replace('\n', "; ");
                self.fail(file, e.span(), format!("this is not valid TOML: {message}"));
                None
            }
        }
    }

    /// Decodes one table into `T`, reporting every key serde rejects. `children` are
    /// sub-tables decoded separately by the caller.
    pub(super) fn decode<T: DeserializeOwned>(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
        children: &[&str],
    ) -> Option<Decoded<T>> {
        let (mut table, start) = match item {
            Item::Table(t) => (t.clone().into_inline_table(), t.span()),
            Item::Value(Value::InlineTable(t)) => (t.clone(), t.span()),
            other => {
                self.fail(
                    file,
                    other.span(),
                    format!(
                        "{what} must be a table, but it is {}: write it as a [table] section",
                        item_kind(other)
                    ),
                );
                return None;
            }
        };
        let start = start.map_or(0, |s| s.start);
        for child in children {
            table.remove(child);
        }
        let mut reported = BTreeSet::new();
        loop {
            match T::deserialize(Value::InlineTable(table.clone()).into_deserializer()) {
                Ok(value) => {
                    return Some(Decoded {
                        value,
                        file,
                        start,
                        what: what.to_owned(),
                        reported,
                    })
                }
                Err(e) => {
                    let offender = e.span().and_then(|span| key_at(&table, span.start));
                    match offender {
                        Some((key, key_span)) if !reported.contains(&key) => {
                            let message = explain(e.message(), &key, what, children);
                            let at = if e.message().starts_with("unknown field") {
                                key_span
                            } else {
                                e.span().or(key_span)
                            };
                            self.fail(file, at, message);
                            table.remove(&key);
                            reported.insert(key);
                        }
                        _ => {
                            self.fail(
                                file,
                                e.span().or(Some(start..start)),
                                format!("{what}: {}", e.message()),
                            );
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// A required key: reports it missing (unless already reported as wrong).
    pub(super) fn require<'v, V, T>(
        &mut self,
        d: &Decoded<T>,
        value: &'v Option<Spanned<V>>,
        key: &str,
        example: &str,
    ) -> Option<&'v Spanned<V>> {
        if value.is_none() && !d.reported.contains(key) {
            self.fail(
                d.file,
                Some(d.start..d.start),
                format!("{} has no `{key}`: add {example}", d.what),
            );
        }
        value.as_ref()
    }

    pub(super) fn name(&mut self, file: FileId, v: &Spanned<String>, what: &str) -> Option<String> {
        let name = v.get_ref();
        if name.is_empty() {
            self.fail(
                file,
                span_of(v),
                format!(
                    "the {what} name is empty: give it a name of letters, digits, `_`, `-` or `.`"
                ),
            );
            return None;
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            self.fail(
                file,
                span_of(v),
                format!(
                    "the {what} name \"{name}\" contains {bad:?}: use only letters, digits, `_`, `-` and `.` (names become MQTT topic levels)"
                ),
            );
            return None;
        }
        let length = name.chars().count();
        if length > MAX_NAME_CHARS {
            self.fail(
                file,
                span_of(v),
                format!(
                    "the {what} name \"{name}\" is {length} characters long: shorten it to at most {MAX_NAME_CHARS} (names become MQTT topic levels and log fields)"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    pub(super) fn int_in(
        &mut self,
        file: FileId,
        v: &Spanned<i64>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        advice: &str,
    ) -> Option<i64> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Some(n)
        } else {
            self.fail(
                file,
                span_of(v),
                format!(
                    "`{key}` = {n} is out of range: {}",
                    advice.replace("{range}", &format!("{} to {}", range.start(), range.end()))
                ),
            );
            None
        }
    }

    /// A duration within `range` (see `limits`), or an error that states the range.
    pub(super) fn duration_in(
        &mut self,
        file: FileId,
        v: &Spanned<HumanDuration>,
        key: &str,
        range: &DurationRange,
    ) -> Option<Duration> {
        let d = v.get_ref().0;
        if range.contains(d) {
            return Some(d);
        }
        let (relation, bound) = if d < range.min {
            ("shorter than", range.min)
        } else {
            ("longer than", range.max)
        };
        self.fail(
            file,
            span_of(v),
            format!(
                "`{key}` = \"{}\" is {relation} {}: {} must be between {} and {}, e.g. \"{}\"",
                format_duration(d),
                format_duration(bound),
                range.what,
                format_duration(range.min),
                format_duration(range.max),
                range.example
            ),
        );
        None
    }

    /// [`Checker::duration_in`] for an optional key, `default` when it is absent.
    pub(super) fn duration_or(
        &mut self,
        file: FileId,
        v: &Option<Spanned<HumanDuration>>,
        key: &str,
        range: &DurationRange,
        default: Duration,
    ) -> Option<Duration> {
        match v {
            Some(v) => self.duration_in(file, v, key, range),
            None => Some(default),
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        file: FileId,
        v: &Spanned<String>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let text = v.get_ref();
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text.as_str()) {
            return Some(*value);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(name, _)| format!(" (write it as \"{name}\")"))
            .unwrap_or_default();
        self.fail(
            file,
            span_of(v),
            format!(
                "`{key}` = \"{text}\" is not one of {}{hint}",
                quoted_list(&names)
            ),
        );
        None
    }
    /// The tables of an array of tables (`[[key]]`, or `key = [{...}, ...]`); anything else
    /// is reported, naming `header` as the way to write it.
    pub(super) fn elements(
        &mut self,
        file: FileId,
        item: &Item,
        header: &str,
        key: &str,
    ) -> Vec<Item> {
        match item {
            Item::ArrayOfTables(list) => list.iter().map(|t| Item::Table(t.clone())).collect(),
            Item::Value(Value::Array(list)) => {
                let mut out = Vec::new();
                for value in list.iter() {
                    match value {
                        Value::InlineTable(_) => out.push(Item::Value(value.clone())),
                        other => self.fail(
                            file,
                            other.span(),
                            format!(
                                "each entry of `{key}` must be a table {{ ... }}, but this is {}",
                                value_kind(other)
                            ),
                        ),
                    }
                }
                out
            }
            other => {
                self.fail(
                    file,
                    other.span(),
                    format!("`{key}` must be a list of tables: write each entry under its own {header} header (double brackets)"),
                );
                Vec::new()
            }
        }
    }
}

/// The `name` written in a table (read before decoding, so a table that will not decode is
/// still named), and how messages call the table: `named` with the name in quotes and
/// `suffix`, or `unnamed` when it has none.
pub(super) fn table_title(
    item: &Item,
    named: &str,
    suffix: &str,
    unnamed: &str,
) -> (Option<String>, String) {
    let name = item_child(item, "name").and_then(|n| n.as_str().map(str::to_owned));
    let what = match &name {
        Some(n) => format!("{named} \"{n}\"{suffix}"),
        None => unnamed.to_owned(),
    };
    (name, what)
}

/// A child of a table item, whether written as a `[section]` or inline.
pub(super) fn item_child(item: &Item, key: &str) -> Option<Item> {
    match item {
        Item::Table(t) => t.get(key).cloned(),
        Item::Value(Value::InlineTable(t)) => t.get(key).map(|v| Item::Value(v.clone())),
        _ => None,
    }
}

/// The key of `table` whose key or value covers byte `offset`, with the key's span.
fn key_at(table: &InlineTable, offset: usize) -> Option<(String, Option<Range<usize>>)> {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    keys.into_iter().find_map(|name| {
        let (key, value) = table.get_key_value(&name)?;
        let covers = |span: Option<Range<usize>>| {
            span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
        };
        (covers(key.span()) || covers(value.span())).then(|| (name.clone(), key.span()))
    })
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_kind(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "a list of tables ([[...]])",
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "a list",
        Value::InlineTable(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let file = SourceFile::new("x".into(), "ab\n\u{e9}cd\n".into());
        assert_eq!(file.position(0), (1, 1));
        assert_eq!(file.position(1), (1, 2));
        assert_eq!(file.position(3), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(file.position(5), (2, 2));
    }
}
