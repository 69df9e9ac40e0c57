//! HTTP/2 conformance: builds h2spec from its Go module and runs it against the https listener.
//!
//! `cargo xtask h2spec` starts the release binary twice (the demo upstream and `serve` with a
//! generated config on free loopback ports), waits for `/readyz`, runs every h2spec case over
//! TLS, and fails unless all of them pass. The last line it prints is the summary
//! `h2spec: N passed, N failed[, N skipped]`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context as _};

use crate::standalone::{distinct_free_ports, Standalone};
use crate::util;

/// h2spec's master branch as a Go pseudo-version (commit 70ac229 of 2020-08-04, the v2.6.0
/// release and the branch head). The v2 tags are not usable module versions (later ones carry a
/// go.mod without a `/v2` path; the proxy lists only v1.5.0 and v2.2.1+incompatible of 2019),
/// and the pin keeps builds reproducible. To move it, resolve the branch head in a scratch module:
/// `GOFLAGS=-mod=mod go list -m -json github.com/summerwind/h2spec@master`.
const H2SPEC_VERSION: &str = "v0.0.0-20200804131034-70ac22940108";
/// The package `go install` builds.
const H2SPEC_PACKAGE: &str = "github.com/summerwind/h2spec/cmd/h2spec";
/// Per-case timeout (seconds) given to h2spec; its default of 2 s is tight on a busy 2-core CI box.
const CASE_TIMEOUT_SECS: &str = "5";
/// The path h2spec requests: the demo upstream answers it after 50 ms. Several cases (e.g.
/// http2/5.1/8, http2/5.1/9, http2/6.9.1/3) open a stream and then send a bad frame on it,
/// assuming the request is still running. An instant answer can beat that frame: the server
/// then ends the stream itself (response, then RST_STREAM NO_ERROR, RFC 9113 section 8.1) and
/// must ignore later frames on it (section 5.1), which h2spec reports as a failure. The delay
/// keeps the stream open until the frame arrives (without it, 4 of 40 runs failed on a busy box).
const TARGET_PATH: &str = "/delay?ms=50";

pub fn run() -> anyhow::Result<()> {
    let h2spec = install_h2spec()?;
    let portcullis = util::release_binary()?;

    let ports: [u16; 5] = distinct_free_ports()?;
    let [upstream, https, ..] = ports;
    // No certificates: the proxy makes a self-signed one (hence h2spec's -k). h2spec sends
    // `:authority: 127.0.0.1:<port>`, so a catch-all route sends it upstream instead of a 404.
    let routes = format!(
        "routes:\n  - from: https://localhost\n    to: [http://127.0.0.1:{upstream}]\n  - from: https://*\n    to: [http://127.0.0.1:{upstream}]\n"
    );
    // Config, logs and the JUnit report live in `served.dir`; removed on success, kept on failure.
    let served = Standalone::start("h2spec", &portcullis, ports, &routes, None)?;
    let dir = served.dir.clone();
    let junit = dir.join("junit.xml");
    eprintln!("\n==> h2spec against https://127.0.0.1:{https}");
    // -t -k: TLS, trusting the self-signed certificate; -o: per-case timeout; -j: JUnit report.
    let status = Command::new(&h2spec)
        .args(["-t", "-k", "-h", "127.0.0.1", "-p", &https.to_string(), "-o", CASE_TIMEOUT_SECS])
        .args(["-P", TARGET_PATH, "-j"])
        .arg(&junit)
        .status()
        .with_context(|| format!("running {}", h2spec.display()))?;
    drop(served);

    let report = std::fs::read_to_string(&junit)
        .with_context(|| format!("h2spec ({status}) wrote no JUnit report; logs in {}", dir.display()))?;
    let results = Results::parse(&report);
    println!("{}", results.summary());
    if !results.failed.is_empty() || results.passed == 0 || !status.success() {
        bail!("h2spec failed ({status}): {:?}; config and logs in {}", results.failed, dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Builds h2spec into `target/tools/h2spec-<version>/` unless it is already there. The build
/// goes to a scratch directory renamed into place at the end, so an interrupted build is
/// never mistaken for a cached one.
fn install_h2spec() -> anyhow::Result<PathBuf> {
    let tools = util::root().join("target/tools");
    let dir = tools.join(format!("h2spec-{H2SPEC_VERSION}"));
    let binary = dir.join("h2spec");
    if binary.is_file() {
        return Ok(binary);
    }
    let scratch = tools.join(format!("h2spec-{H2SPEC_VERSION}.{}.tmp", std::process::id()));
    let package = format!("{H2SPEC_PACKAGE}@{H2SPEC_VERSION}");
    eprintln!("\n==> build h2spec: go install {package}");
    let status = util::Go::new()
        .command()
        .args(["install", &package])
        .env("GOBIN", &scratch)
        .status()
        .context("running `go` (Go is needed to build h2spec)")?;
    ensure!(status.success(), "go install {package} failed ({status})");
    // Another run may have finished first; its binary is the same one.
    if std::fs::rename(&scratch, &dir).is_err() && binary.is_file() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    ensure!(binary.is_file(), "{} is missing after go install", binary.display());
    Ok(binary)
}

/// Outcome of an h2spec run, read from its JUnit report (stabler than its console output).
#[derive(Debug, Default, PartialEq)]
struct Results {
    passed: usize,
    skipped: usize,
    /// Case ids as h2spec takes them on its command line, e.g. `http2/3.5/2`.
    failed: Vec<String>,
}

impl Results {
    /// Each `<testsuite package="http2/3.5">` holds its cases in order; case N is `http2/3.5/N`.
    /// A case with an `<error>` or `<failure>` failed, one with `<skipped>` was skipped.
    fn parse(junit: &str) -> Self {
        let mut results = Self::default();
        for suite in junit.split("<testsuite ").skip(1) {
            let package = suite.split("package=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("?");
            for (i, case) in suite.split("<testcase ").skip(1).enumerate() {
                let case = case.split("</testcase>").next().unwrap_or(case);
                if case.contains("<error") || case.contains("<failure") {
                    results.failed.push(format!("{package}/{}", i + 1));
                } else if case.contains("<skipped") {
                    results.skipped += 1;
                } else {
                    results.passed += 1;
                }
            }
        }
        results
    }

    /// `h2spec: N passed, N failed`, with `, N skipped` when any were.
    fn summary(&self) -> String {
        let skipped = if self.skipped > 0 { format!(", {} skipped", self.skipped) } else { String::new() };
        format!("h2spec: {} passed, {} failed{skipped}", self.passed, self.failed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::Results;

    #[test]
    fn parses_junit_report() {
        let junit = r#"<testsuites>
  <testsuite name="3.5. HTTP/2 Connection Preface" package="http2/3.5" id="3.5" tests="2" skipped="0" failures="0" errors="1">
    <testcase package="http2/3.5" classname="Sends client connection preface" time="0.0001"></testcase>
    <testcase package="http2/3.5" classname="Sends invalid connection preface" time="0.0006">
      <error>GOAWAY Frame (Error Code: PROTOCOL_ERROR)</error>
    </testcase>
  </testsuite>
  <testsuite name="6.1. DATA" package="http2/6.1" id="6.1" tests="2">
    <testcase package="http2/6.1" classname="a" time="0.1"><skipped/></testcase>
    <testcase package="http2/6.1" classname="b" time="0.1"></testcase>
  </testsuite>
</testsuites>"#;
        let r = Results::parse(junit);
        assert_eq!(r, Results { passed: 2, skipped: 1, failed: vec!["http2/3.5/2".to_owned()] });
        assert_eq!(r.summary(), "h2spec: 2 passed, 1 failed, 1 skipped");
    }
}
