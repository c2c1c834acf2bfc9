//! Binary sizes: this build's agent, and cross-built packaged binaries when found.

use std::path::PathBuf;

use crate::report::Report;

pub fn sizes(report: &mut Report) {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_fieldlink"));
    if let Ok(m) = std::fs::metadata(&own) {
        report
            .add(
                "binary size",
                if cfg!(feature = "demo") {
                    "x86_64 (this build, with the demo broker)"
                } else {
                    "x86_64 (this build, as packaged: no demo)"
                },
                m.len() as f64 / 1_048_576.0,
                "MiB",
            )
            .note = own.display().to_string();
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("FIELDLINK_CROSS_TARGET_DIR") {
        roots.push(d.into());
    }
    if let Some(d) = own.parent().and_then(|p| p.parent()) {
        roots.push(d.to_path_buf());
    }
    for (triple, label) in [
        ("x86_64-unknown-linux-gnu", "x86_64 (packaged, no demo)"),
        ("aarch64-unknown-linux-gnu", "aarch64 (packaged, no demo)"),
        ("armv7-unknown-linux-gnueabihf", "armv7 (packaged, no demo)"),
    ] {
        let found = roots
            .iter()
            .map(|r| r.join(triple).join("release/fieldlink"))
            .find(|p| p.exists());
        match found.and_then(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len()))) {
            Some((p, len)) => {
                let row = report.add("binary size", label, len as f64 / 1_048_576.0, "MiB");
                row.note = p.display().to_string();
                if triple.starts_with("aarch64") {
                    row.goal = Some(("<=", 8.0));
                }
            }
            None => println!("  (no {triple} binary found: run packaging/cross-build.sh, or set FIELDLINK_CROSS_TARGET_DIR)"),
        }
    }
}
