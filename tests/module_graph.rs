//! The shape of the house: read from the `use` lines and `crate::`/`super::` paths of every
//! file under src/, the modules import one another without a circle, and no module imports
//! from one of its ancestors (a parent's `mod.rs` is the wing's front door for the outside,
//! never a room its own children reach back into). Unit tests are left out: a test module
//! naturally reaches into what it tests.
//!
//! The reading is textual on purpose (no syn, no build): paths are resolved to the deepest
//! module file that exists, which is exact for this code base's style of `use` trees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_owned());
    }
    parts
}

fn is_test_file(m: &Module) -> bool {
    m.iter().any(|p| p == "tests")
}

/// The code of a file without comments and without its trailing `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // A `//` inside a string literal (a URL) is rare here; cutting there only loses
            // the rest of that line, never invents a path.
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its full paths.
fn expand(tree: &str) -> Vec<String> {
    // Aliases go first (`d as e`), while the spaces still tell the keyword from a name that
    // merely contains "as" (`password`).
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" && i + 1 < words.len() {
            // Keep the punctuation that followed the alias (`e},` -> `},`).
            let alias = words[i + 1];
            let rest = alias.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            kept.push(rest);
            i += 2;
        } else {
            kept.push(words[i]);
            i += 1;
        }
    }
    let tree: String = kept.concat();
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        match t.find('{') {
            None => out.push(format!("{prefix}{t}")),
            Some(open) => {
                let head = &t[..open];
                // Not a use tree after all (the word "use" in a string): nothing to add.
                let Some(close) = t.rfind('}').filter(|&c| c > open) else {
                    return;
                };
                let inner = &t[open + 1..close];
                let mut depth = 0;
                let mut start = 0;
                let mut items = Vec::new();
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&inner[start..i]);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&inner[start..]);
                for item in items.into_iter().filter(|i| !i.is_empty()) {
                    go(&format!("{prefix}{head}"), item, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

/// Every path the code names that starts at `crate::`, `super::` or `self::`.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements, possibly spread over lines.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before.is_none_or(|c| c.is_whitespace()) {
            paths.extend(expand(&after[..end]));
        }
        rest = &after[end..];
    }
    // Paths written inline in code.
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            paths.push(tail[..len].to_owned());
            rest = &tail[len..];
        }
    }
    paths
}

/// The deepest module among `modules` that `path` (as written in `from`) names.
fn resolve(path: &str, from: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Module = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"super") | Some(&"self") => {
            let mut b = from.clone();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            if segs.first() == Some(&"self") {
                segs.remove(0);
            }
            b
        }
        // `use child::Item` in a module names its own child (2018 paths); any other first
        // segment is an outside crate.
        Some(first) if modules.contains(&[from.clone(), vec![(*first).to_owned()]].concat()) => {
            from.clone()
        }
        _ => return None,
    };
    let mut found = modules.contains(&base).then(|| base.clone());
    for s in segs {
        base.push(s.to_owned());
        if modules.contains(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeSet<Module> = all.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &all {
        let from = module_of(&src, file);
        if is_test_file(&from) || file.ends_with("main.rs") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let targets: &mut BTreeSet<Module> = edges.entry(from.clone()).or_default();
        for path in paths_in(&code) {
            if let Some(to) = resolve(&path, &from, &modules) {
                if to != from && !is_test_file(&to) {
                    targets.insert(to);
                }
            }
        }
    }
    edges
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_from_its_own_ancestors() {
    let mut upward = Vec::new();
    for (from, targets) in graph() {
        for to in targets {
            if to.len() < from.len() && from.starts_with(&to) {
                upward.push(format!("{} -> {}", name(&from), name(&to)));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules that import from an ancestor (import from the sibling that owns the item \
         instead): {upward:#?}"
    );
}

#[test]
fn the_modules_import_one_another_without_a_circle() {
    let edges = graph();
    // A parent's re-export of its child's item counts like any import: what imports
    // `buffer::Outbox` depends on `buffer::outbox`. (Upward imports, which would make every
    // parent and child a circle, are refused by the test above.)
    let mut circles = Vec::new();
    let mut state: BTreeMap<Module, u8> = BTreeMap::new();
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
        circles: &mut Vec<String>,
    ) {
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for to in edges.get(m).into_iter().flatten() {
            match state.get(to).copied().unwrap_or(0) {
                0 => visit(to, edges, state, stack, circles),
                1 => {
                    let at = stack.iter().position(|s| s == to).unwrap();
                    let mut ring: Vec<String> = stack[at..].iter().map(name).collect();
                    ring.push(name(to));
                    circles.push(ring.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
    }
    for m in edges.keys() {
        if state.get(m).copied().unwrap_or(0) == 0 {
            visit(m, &edges, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_reader_sees_use_trees_and_inline_paths() {
    assert_eq!(
        expand("super::{a, b::{c, d as e}}"),
        ["super::a", "super::b::c", "super::b::d"]
    );
    let code = code_of("use crate::x::{Y, z::W};\nfn f() { crate::q::r(); }\n// use crate::no;\n#[cfg(test)]\nuse crate::hidden;\n");
    let paths = paths_in(&code);
    assert!(paths.contains(&"crate::x::Y".to_owned()));
    assert!(paths.contains(&"crate::q::r".to_owned()));
    assert!(!paths
        .iter()
        .any(|p| p.contains("no") || p.contains("hidden")));
}
