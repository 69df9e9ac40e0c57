//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through `portcullis::fuzzing` on
//! the stable toolchain, without cargo-fuzz: every input the fuzzer once found interesting,
//! and every crash it found (added after the fix), stays a regression test. `cargo xtask
//! fuzz` grows the corpus; see docs/hardening.md.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;

/// Runs every file of one target's corpus directory; returns how many there were.
fn replay(target: &str, run: portcullis::fuzzing::Target) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        eprintln!("{target}: {}", file.display());
        run(&data);
    }
    println!("fuzz corpus {target}: replayed {} inputs", files.len());
    assert!(!files.is_empty(), "no corpus for {target} in {}", dir.display());
    files.len()
}

#[test]
fn corpus_config() {
    replay("config", portcullis::fuzzing::config);
}

#[test]
fn corpus_annotations() {
    replay("annotations", portcullis::fuzzing::annotations);
}

#[test]
fn corpus_route_match() {
    replay("route_match", portcullis::fuzzing::route_match);
}

#[test]
fn corpus_http1() {
    replay("http1", portcullis::fuzzing::http1);
}

/// Every target of `portcullis::fuzzing` has a corpus test above and a cargo-fuzz target.
#[test]
fn every_target_is_replayed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in portcullis::fuzzing::TARGETS {
        assert!(root.join("fuzz/corpus").join(name).is_dir(), "fuzz/corpus/{name} is missing");
        assert!(
            root.join("fuzz/fuzz_targets").join(format!("{name}.rs")).is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
}
