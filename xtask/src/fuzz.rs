//! Coverage-guided fuzzing with cargo-fuzz (libFuzzer): `cargo xtask fuzz [--seconds N]
//! [TARGET...]`.
//!
//! Installs cargo-fuzz at a pinned version into `target/tools/` (from crates.io) if it is
//! missing, then runs each target of `fuzz/` (all four by default: `config`, `annotations`,
//! `route_match`, `http1`; see `src/fuzzing.rs`) with the nightly toolchain for N seconds
//! (default 60) on its corpus `fuzz/corpus/TARGET/`, which grows with the new inputs libFuzzer
//! finds interesting (minimise with `cargo +nightly fuzz cmin TARGET` before committing it).
//! Prints per target the CPU time used and whether a crash was found, and fails if any target
//! crashed: libFuzzer writes the crashing input to `fuzz/artifacts/TARGET/`. Not part of
//! `cargo xtask test`, which replays the committed corpus on stable (`tests/fuzz_corpus.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};

use crate::util;

/// The cargo-fuzz release installed into `target/tools/`.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// Every target of `fuzz/fuzz_targets/`, in the order they run by default.
const TARGETS: &[&str] = &["config", "annotations", "route_match", "http1"];
/// Seconds per target unless `--seconds` says otherwise.
const DEFAULT_SECONDS: u64 = 60;

/// One target's run.
struct Outcome {
    target: String,
    cpu_seconds: f64,
    wall_seconds: f64,
    crashed: bool,
    artifacts: Vec<PathBuf>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let n = args.next().context("--seconds needs a number")?;
                seconds = n.parse().with_context(|| format!("--seconds {n:?}"))?;
            }
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => {
                bail!("unknown argument {other:?}; usage: cargo xtask fuzz [--seconds N] [{}]...", TARGETS.join("|"))
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    let tools_bin = install_cargo_fuzz()?;
    ensure_nightly()?;
    let root = util::root();
    // `cargo fuzz` finds `cargo-fuzz` on PATH.
    let path = format!("{}:{}", tools_bin.display(), std::env::var("PATH").unwrap_or_default());

    // Build every target first, so that the CPU time below is the fuzzing alone.
    let build = Command::new("cargo")
        .args(["+nightly", "fuzz", "build"])
        .current_dir(&root)
        .env("PATH", &path)
        .stdin(Stdio::null())
        .status()
        .context("running cargo +nightly fuzz build")?;
    ensure!(build.success(), "cargo +nightly fuzz build failed ({build})");

    let mut outcomes = Vec::new();
    for target in &targets {
        let corpus = root.join("fuzz/corpus").join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let before = list(&artifacts);
        let argv = [
            "cargo",
            "+nightly",
            "fuzz",
            "run",
            target,
            &corpus.to_string_lossy(),
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
        ]
        .map(ToOwned::to_owned);
        eprintln!("\n==> fuzz {target} for {seconds} s: {}", argv.join(" "));
        let cpu_before = children_cpu_seconds();
        let started = Instant::now();
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&root)
            .env("PATH", &path)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {}", argv.join(" ")))?;
        let wall_seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = children_cpu_seconds() - cpu_before;
        // libFuzzer's findings: crash-, leak-, timeout- and oom- files (not slow-unit- ones).
        let new: Vec<PathBuf> = list(&artifacts)
            .into_iter()
            .filter(|p| !before.contains(p))
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ["crash-", "leak-", "timeout-", "oom-"].iter().any(|prefix| name.starts_with(prefix))
            })
            .collect();
        let crashed = !status.success() || !new.is_empty();
        outcomes.push(Outcome { target: target.clone(), cpu_seconds, wall_seconds, crashed, artifacts: new });
    }

    eprintln!("\n==> fuzz summary ({seconds} s per target)");
    for o in &outcomes {
        println!(
            "fuzz {:<12} {:>7.1} CPU-s ({:.1} CPU-min) in {:>6.1} s: {}",
            o.target,
            o.cpu_seconds,
            o.cpu_seconds / 60.0,
            o.wall_seconds,
            if o.crashed { "CRASH" } else { "no crash" }
        );
        for a in &o.artifacts {
            println!("    {}", a.display());
        }
    }
    let crashed: Vec<&str> = outcomes.iter().filter(|o| o.crashed).map(|o| o.target.as_str()).collect();
    let passed = outcomes.len() - crashed.len();
    println!("fuzz: {passed} passed, {} failed", crashed.len());
    ensure!(
        crashed.is_empty(),
        "crash found in {}: reproduce with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/<file>`",
        crashed.join(", ")
    );
    Ok(())
}

/// `target/tools/bin/cargo-fuzz` at [`CARGO_FUZZ_VERSION`], installed from crates.io unless it
/// is there already; returns `target/tools/bin`.
fn install_cargo_fuzz() -> anyhow::Result<PathBuf> {
    let tools = util::root().join("target/tools");
    let bin = tools.join("bin");
    let cargo_fuzz = bin.join("cargo-fuzz");
    let installed = Command::new(&cargo_fuzz)
        .args(["fuzz", "--version"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if !installed {
        util::step(
            "install cargo-fuzz",
            &[
                "cargo",
                "install",
                "--root",
                &tools.to_string_lossy(),
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ],
        )?;
    }
    Ok(bin)
}

/// libFuzzer's instrumentation needs nightly (`-Zsanitizer`): installs it with rustup when
/// it is missing.
fn ensure_nightly() -> anyhow::Result<()> {
    let present = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        util::step(
            "install the nightly toolchain",
            &["rustup", "toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    Ok(())
}

/// The files in `dir` (none if it does not exist).
fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

/// User plus system CPU seconds of this process's waited-for children (and theirs), from
/// `/proc/self/stat` (`cutime` and `cstime`, in clock ticks of 1/100 s on Linux).
fn children_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The command name (field 2) is in parentheses and may hold spaces; fields count after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so cutime (16) and cstime (17) are at 13 and 14.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}
