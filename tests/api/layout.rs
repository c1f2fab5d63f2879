//! The crate's module order, as `src/lib.rs` states it: each top-level module
//! uses only the modules declared after it, so the crate has no import circle.
//! Read from the sources, so a new `use` that breaks the order fails here.

use std::path::{Path, PathBuf};

/// The top-level modules, in the order `src/lib.rs` declares them.
fn declared_order(src: &Path) -> Vec<String> {
    std::fs::read_to_string(src.join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(';').to_owned())
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The `crate::<module>` paths of a file's code (comments left out).
fn used_modules(text: &str) -> Vec<String> {
    let mut used = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            used.push(name);
        }
    }
    used
}

#[test]
fn every_module_uses_only_the_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = declared_order(&src);
    assert!(order.len() > 5, "lib.rs declares the modules: {order:?}");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(rank) = order.iter().position(|m| *m == top) else {
            continue; // lib.rs and main.rs sit above every module
        };
        for used in used_modules(&std::fs::read_to_string(&file).unwrap()) {
            match order.iter().position(|m| *m == used) {
                Some(other) if other < rank => {
                    upward.push(format!("{} uses crate::{used}", relative.display()));
                }
                _ => {}
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the order of src/lib.rs: {upward:#?}"
    );
}
