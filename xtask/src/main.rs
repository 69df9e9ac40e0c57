//! Project automation: `cargo xtask test` is the one command that runs every test (CI calls
//! exactly this), `cargo xtask bench` runs the benchmarks. Besides cargo's own tests, `test` runs
//! h2spec (HTTP/2 conformance, `h2spec.rs`) and an independent HTTP/3 client, Python's aioquic,
//! against the QUIC listener (`h3check.rs`), the Helm chart with a real helm (`chart.rs`) and
//! the Dockerfile's static build (`image.rs`); each also runs alone as
//! `cargo xtask h2spec|h3check|chart|image`.

mod bench;
mod chart;
mod e2e;
mod fuzz;
mod h2spec;
mod h3check;
mod image;
mod scale;
mod standalone;
mod testssl;
mod util;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("h2spec") => h2spec::run(),
        Some("h3check") => h3check::run(),
        Some("chart") => chart::run(&args[1..]),
        Some("image") => image::run().map(drop),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("testssl") => testssl::run(),
        Some("bench") if args.get(1).map(String::as_str) == Some("controller") => scale::run(&args[2..]),
        Some("bench") => bench::run(&args[1..]),
        Some("e2e-cluster") => e2e::run(&args[1..]),
        Some("e2e") => e2e::suite(),
        _ => {
            eprintln!("usage: cargo xtask <test|h2spec|h3check|testssl|chart|image|e2e|bench|fuzz|e2e-cluster>\n  test    every check CI runs: fmt, clippy, unit, integration, h2spec, h3check, testssl, chart, image, e2e\n  h2spec  HTTP/2 conformance against the https listener\n  chart   the Helm chart with a real helm (`--write` regenerates deploy/portcullis.yaml)\n  image   the Dockerfile's static build, run as non-root in an empty root\n  h3check HTTP/3 checks with an independent client (Python's aioquic) against the QUIC listener\n  testssl testssl.sh against the https listener: TLS 1.2/1.3 only, AEAD suites only, nothing above LOW\n  e2e     end-to-end tests against a real kube-apiserver and etcd\n  bench   benchmarks (slow; not part of test); `bench controller [--objects N]`: the controller scale benchmark (10,000 by default)\n  fuzz    [--seconds N] [TARGET...]: cargo-fuzz on nightly (config, annotations, route_match, http1; not part of test)\n  e2e-cluster  build | up [--keep]: the e2e control plane alone, for manual use");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything CI runs, in order of cost, stopping at the first failure. The end-to-end tests
/// need the cluster that `e2e::suite` starts, so the workspace run leaves them out.
fn test(_args: &[String]) -> anyhow::Result<()> {
    // Every step below builds once; incremental caches would only add ~2 GB to the disk a CI
    // machine needs. Set before any thread starts, so every cargo child inherits it.
    std::env::set_var("CARGO_INCREMENTAL", "0");
    util::step("rustfmt", &["cargo", "fmt", "--all", "--check"])?;
    util::step("clippy", &["cargo", "clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    util::step(
        "unit and integration tests",
        &["cargo", "test", "--workspace", "--exclude", "portcullis-e2e", "--no-fail-fast"],
    )?;
    let started = std::time::Instant::now();
    // The image's static binary first: the release checks below run that very binary rather
    // than a second release build of the same code (one full build less on two cores).
    util::timed("image", || image::run().map(util::use_release_binary))?;
    util::timed("h2spec", h2spec::run)?;
    util::timed("h3check", h3check::run)?;
    util::timed("testssl", testssl::run)?;
    util::timed("chart", || chart::run(&[]))?;
    util::timed("e2e", e2e::suite)?;
    eprintln!("==> after the cargo steps: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
