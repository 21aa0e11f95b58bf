//! The folder layout's contracts, checked on the source text: the product never imports from
//! the test bench (`src/rig/`), and every source file opens with a `//!` comment saying what it
//! owns.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Product files: everything under src/ except the bench (src/rig/) and the binary's
/// dispatcher (src/main.rs, which hands the rig's subcommands to it).
fn product_files() -> Vec<PathBuf> {
    let src = src();
    sources(&src)
        .into_iter()
        .filter(|p| !p.starts_with(src.join("rig")) && *p != src.join("main.rs"))
        .collect()
}

/// Identifier tokens of `text` with their byte offsets.
fn idents(text: &str) -> Vec<(usize, &str)> {
    let b = text.as_bytes();
    let is_id = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_id(b[i]) {
            let s = i;
            while i < b.len() && is_id(b[i]) {
                i += 1;
            }
            out.push((s, &text[s..i]));
        } else {
            i += 1;
        }
    }
    out
}

/// Lines of `text` that reach the `rig` module: a path segment `rig` (`crate::rig::x`,
/// `espd::rig`, `super::rig`, `rig::Rig`) or `rig` named in a `use` item
/// (`use crate::{config, rig};`). Comments count too: the product has no reason to name it.
fn mentions_rig(text: &str) -> Vec<usize> {
    let line_of = |off: usize| text[..off].matches('\n').count() + 1;
    let mut lines = Vec::new();
    for (off, id) in idents(text) {
        if id != "rig" {
            continue;
        }
        let before = text[..off].trim_end();
        let after = text[off + 3..].trim_start();
        if before.ends_with("::") || after.starts_with("::") {
            lines.push(line_of(off));
        }
    }
    // `use` items: from the keyword to the next `;`.
    let ids = idents(text);
    for (k, &(off, id)) in ids.iter().enumerate() {
        if id != "use" {
            continue;
        }
        let end = text[off..].find(';').map_or(text.len(), |e| off + e);
        if ids[k + 1..]
            .iter()
            .take_while(|(o, _)| *o < end)
            .any(|(_, i)| *i == "rig")
        {
            lines.push(line_of(off));
        }
    }
    lines.sort();
    lines.dedup();
    lines
}

#[test]
fn the_checker_sees_every_way_to_reach_the_rig() {
    for bad in [
        "fn f() { crate::rig::ns(\"gw-a\", &[]); }",
        "use crate::rig::{Rig, RigSpec};",
        "use crate::{config, rig};",
        "use crate::{\n    config,\n    rig::procs::Proc,\n};",
        "use super::rig;",
        "let _ = espd::rig :: status();",
    ] {
        assert!(!mentions_rig(bad).is_empty(), "not caught: {bad}");
    }
    for good in [
        "//! the veth rig drives espd from outside",
        "let rig = 1; let trigger = crate::trig::x; use crate::rigid;",
        "pub mod rig;",
    ] {
        assert_eq!(
            mentions_rig(good),
            Vec::<usize>::new(),
            "false alarm: {good}"
        );
    }
    assert_eq!(mentions_rig("a\nb\nuse crate::rig;\n"), vec![3]);
}

#[test]
fn product_modules_do_not_import_the_rig() {
    let files = product_files();
    // The walk found the product (a broken walk would pass vacuously).
    let top = |p: &PathBuf| -> Option<String> {
        let first = p.strip_prefix(src()).ok()?.iter().next()?;
        Some(Path::new(first).file_stem()?.to_string_lossy().into_owned())
    };
    for must in [
        "daemon", "config", "datapath", "control", "wire", "ctl", "offline",
    ] {
        assert!(
            files.iter().any(|p| top(p).as_deref() == Some(must)),
            "no product module {must} under src/"
        );
    }
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for line in mentions_rig(&text) {
            bad.push(format!("{}:{line}", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "product modules reach into the test bench (src/rig/), which must stay apart:\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_source_file_says_what_it_owns() {
    let missing: Vec<String> = sources(&src())
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without an opening `//!` comment:\n{}",
        missing.join("\n")
    );
}
