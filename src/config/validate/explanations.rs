//! The words of validation: how a message names things and what it suggests. Rewrites
//! serde's complaints into sentences that say what to do, suggests the key that was meant,
//! escapes what the file echoes so every error is one line, and lists names in prose.
//!
//! Pure text: knows nothing of files, spans or sections, and imports nothing else of
//! `validate`.

use crate::config::raw::ROOT_KEYS;

/// Rewrites serde's message for a rejected key into a sentence saying what to do.
pub(super) fn explain(message: &str, key: &str, what: &str, children: &[&str]) -> String {
    if let Some(rest) = message.strip_prefix("unknown field") {
        let mut allowed: Vec<String> = backticked(rest).into_iter().skip(1).collect();
        allowed.extend(children.iter().map(|c| (*c).to_owned()));
        if what == "the top of the file" {
            allowed = ROOT_KEYS.iter().map(|k| (*k).to_owned()).collect();
        }
        let suggestion = allowed
            .iter()
            .filter(|k| edit_distance(k, key) <= 2)
            .min_by_key(|k| edit_distance(k, key))
            .map(|k| format!("did you mean `{k}`? "))
            .unwrap_or_default();
        let misplaced = if what != "the top of the file" && ROOT_KEYS.contains(&key) {
            " (a top-level key written after a [table] header belongs to that table: move it above the first header)"
        } else {
            ""
        };
        let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
        return format!(
            "unknown key `{key}` in {what}{misplaced}: {suggestion}the keys allowed here are {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let expected = match expected {
                "i64" | "u64" | "i32" | "u32" | "u16" | "u8" => "a whole number (no quotes)",
                "f64" | "f32" => "a number (no quotes)",
                "a string" => "a string in quotes",
                "a sequence" => "a list [ ... ]",
                "a boolean" => "true or false",
                other => other,
            };
            return format!("`{key}` must be {expected}, but it is {found}");
        }
    }
    format!("`{key}`: {message}")
}

/// The `quoted` words of a serde message, in order.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `text` with every control character (and the Unicode line and paragraph separators and
/// the bidirectional overrides, which reorder a terminal line) written as an escape: `\n`,
/// `\r`, `\t`, or `\u{7f}`.
pub(super) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// "status, health, meta and set".
pub(super) fn reserved_list(reserved: &[(&str, &str)]) -> String {
    let names: Vec<&str> = reserved.iter().map(|(n, _)| *n).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

pub(super) fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn plural(n: u16, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("qos", "qos"), 0);
        assert_eq!(edit_distance("baud", "bus"), 2);
    }
}
