//! TLS scan of the https listener with testssl.sh: `cargo xtask testssl`.
//!
//! Installs Debian's `testssl.sh` package if `testssl` is missing (`apt-get install -y
//! testssl.sh`, which brings `dnsutils` and `bsdmainutils` along), builds the release binary,
//! makes a test CA and a `localhost` leaf certificate with `openssl`, starts the demo upstream
//! and `serve` with that certificate on free loopback ports (`standalone.rs`), and scans
//! `https://localhost:<port>` at 127.0.0.1 with testssl.sh's default checks (protocols,
//! cipher categories, every offered suite, server preferences, certificate, HTTP headers,
//! vulnerabilities, client simulations), non-interactively and without any DNS lookup or
//! OCSP/CRL fetch (`--nodns none`; `--phone-out` is not given). It parses the JSON and fails
//! unless:
//!
//! - only TLS 1.2 and TLS 1.3 are offered (SSLv2, SSLv3, TLS 1.0 and TLS 1.1 not offered);
//! - every offered suite is AEAD (AES-GCM, AES-CCM or ChaCha20-Poly1305): no CBC, RC4, 3DES,
//!   NULL, EXPORT or anonymous suite, and testssl.sh's NULL, aNULL, EXPORT, LOW, 3DES/IDEA and
//!   AVERAGE (obsolete CBC) categories are all not offered;
//! - no finding has a severity above LOW (MEDIUM, HIGH and CRITICAL fail, as do testssl.sh's
//!   own WARN and FATAL scan problems if they persist over [`SCANS`] scans), except the ones
//!   in [`EXCLUDED`], which are only about
//!   the test certificate (see there). The scanned route sets HSTS and the usual security
//!   headers as a deployment would (testssl.sh rates a response without them MEDIUM; the
//!   headers are the route's `set_response_headers`, not TLS settings).
//!
//! It prints a summary (protocols, suites, counts by severity, excluded findings); the full
//! report and JSON stay in the scratch directory when the scan fails. See docs/hardening.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;

use crate::standalone::{distinct_free_ports, Standalone};
use crate::util;

/// Findings that are about the test certificate only, never about the listener's TLS
/// configuration. The CA is made for the scan and trusted with `--add-ca`, so the chain and
/// the name normally pass; they are listed for a run where that fails (an expired scratch
/// CA, a testssl.sh that ignores `--add-ca`), which says nothing about the server's TLS.
pub const EXCLUDED: &[(&str, &str)] = &[
    ("cert_chain_of_trust", "the chain ends at a CA made for this scan"),
    ("cert_trust", "trust and name match of the scan's own certificate"),
    ("cert_revocation", "a scratch certificate has neither a CRL nor an OCSP URI"),
    ("cert_ocspURL", "a scratch certificate has no OCSP responder"),
    ("cert_crlDistributionPoints", "a scratch certificate has no CRL"),
    ("OCSP_stapling", "nothing to staple without an OCSP responder"),
    ("cert_mustStapleExtension", "OCSP must-staple is a property of the certificate"),
    ("certificate_transparency", "a scratch certificate is not logged in CT"),
    ("cert_validityPeriod", "validity period policy of the scratch certificate"),
    ("cert_expirationStatus", "expiry of the scratch certificate"),
    ("cert_notAfter", "expiry of the scratch certificate"),
    ("DNS_CAArecord", "no DNS for localhost (and lookups are off)"),
];

/// Severities that fail the scan.
const FAILING: &[&str] = &["MEDIUM", "HIGH", "CRITICAL", "WARN", "FATAL"];
/// testssl.sh's own scan problems (a check that could not run, e.g. "check failed because of
/// connect problem" when a loaded machine made one of its many connections time out): not a
/// finding about the server, so the scan is run again, at most `SCANS` times in all, and
/// fails only if they persist.
const SCAN_PROBLEMS: &[&str] = &["WARN", "FATAL"];
const SCANS: usize = 3;

/// The scan itself could not complete some checks (only [`SCAN_PROBLEMS`]).
#[derive(Debug)]
struct ScanProblems(Vec<String>);

impl std::fmt::Display for ScanProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "testssl.sh could not complete {} check(s): {}", self.0.len(), self.0.join("; "))
    }
}

impl std::error::Error for ScanProblems {}
/// Protocols that must not be offered, and the ones that must be, by testssl.sh's ids.
const NOT_OFFERED: &[&str] = &["SSLv2", "SSLv3", "TLS1", "TLS1_1"];
const OFFERED: &[&str] = &["TLS1_2", "TLS1_3"];
/// Cipher categories that must not be offered (`cipherlist_<name>`).
const WEAK_CATEGORIES: &[&str] = &["NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE"];

pub fn run() -> anyhow::Result<()> {
    let testssl = install_testssl()?;
    let portcullis = util::release_binary()?;

    let certs = std::env::temp_dir().join(format!("portcullis-testssl-pki-{}", std::process::id()));
    let (ca, cert, key) = make_certificates(&certs)?;
    let ports = distinct_free_ports()?;
    let https = ports[1];
    let body = format!(
        "certificates:\n  - cert_file: {cert}\n    key_file: {key}\nroutes:\n  - from: https://localhost\n    \
         to: [http://127.0.0.1:{upstream}]\n    set_response_headers:\n      \
         Strict-Transport-Security: max-age=63072000; includeSubDomains\n      \
         X-Content-Type-Options: nosniff\n      X-Frame-Options: DENY\n      \
         Content-Security-Policy: default-src 'none'\n      Referrer-Policy: no-referrer\n",
        cert = cert.display(),
        key = key.display(),
        upstream = ports[0],
    );
    let served = Standalone::start("testssl", &portcullis, ports, &body, None)?;
    let dir = served.dir.clone();

    let json = dir.join("testssl.json");
    let report = dir.join("testssl.txt");
    let target = format!("https://localhost:{https}");
    let mut result = Ok(());
    for attempt in 1..=SCANS {
        result = scan(&testssl, &ca, &json, &report, &target);
        match &result {
            Err(e) if attempt < SCANS && e.downcast_ref::<ScanProblems>().is_some() => {
                eprintln!("==> testssl: {e}; scanning again ({} of {SCANS})", attempt + 1);
            }
            _ => break,
        }
    }
    drop(served);
    let _ = std::fs::remove_dir_all(&certs);
    match result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Err(e) => Err(e.context(format!("testssl.sh report and JSON in {}", dir.display()))),
    }
}

/// One run of testssl.sh against `target`, checked.
fn scan(testssl: &Path, ca: &Path, json: &Path, report: &Path, target: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(json);
    let args: Vec<String> = [
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "batch",
        "--nodns",
        "none",
        "--ip",
        "127.0.0.1",
        "--add-ca",
        &ca.to_string_lossy(),
        "--connect-timeout",
        "10",
        "--openssl-timeout",
        "10",
        "--jsonfile-pretty",
        &json.to_string_lossy(),
        target,
    ]
    .map(str::to_owned)
    .to_vec();
    eprintln!("\n==> testssl: {} {} (report: {})", testssl.display(), args.join(" "), report.display());
    let started = Instant::now();
    let out = std::fs::File::create(report).with_context(|| format!("creating {}", report.display()))?;
    let status = Command::new(testssl)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("running {}", testssl.display()))?;
    eprintln!("==> testssl finished in {:.0} s ({status})", started.elapsed().as_secs_f64());
    let text = std::fs::read_to_string(json)
        .with_context(|| format!("reading {} (testssl.sh exited {status})", json.display()))?;
    check(&text)
}

/// Checks the scan's JSON (`--jsonfile-pretty`) and prints the summary.
fn check(text: &str) -> anyhow::Result<()> {
    let doc: Value = serde_json::from_str(text).context("parsing testssl.sh JSON")?;
    let version = doc["version"].as_str().unwrap_or("?").trim();
    let scan = doc["scanResult"].get(0).context("testssl.sh JSON has no scanResult")?;
    let findings: Vec<(&str, &str, &str, &str)> = scan
        .as_object()
        .context("scanResult[0] is not an object")?
        .iter()
        .filter_map(|(section, v)| v.as_array().map(|items| (section, items)))
        .flat_map(|(section, items)| {
            items.iter().map(move |f| {
                (
                    section.as_str(),
                    f["id"].as_str().unwrap_or(""),
                    f["severity"].as_str().unwrap_or(""),
                    f["finding"].as_str().unwrap_or(""),
                )
            })
        })
        .collect();
    ensure!(!findings.is_empty(), "testssl.sh reported no findings (did the scan run?)");
    let finding = |id: &str| findings.iter().find(|f| f.1 == id).map(|f| f.3);
    let mut problems = Vec::new();

    // Protocols.
    let mut offered = Vec::new();
    for id in NOT_OFFERED.iter().chain(OFFERED) {
        let value = finding(id).unwrap_or("(not reported)");
        let is_offered = value.starts_with("offered");
        if is_offered {
            offered.push(*id);
        }
        let want = OFFERED.contains(id);
        if is_offered != want || (!want && !value.starts_with("not offered")) {
            problems.push(format!("protocol {id}: {value:?} (want {})", if want { "offered" } else { "not offered" }));
        }
    }

    // Suites: every one offered (`cipher_x<hex>`: "... <RFC name>") and the weak categories.
    let suites: Vec<&str> = findings
        .iter()
        .filter(|f| f.0 == "cipherTests" && f.1.starts_with("cipher_x"))
        .filter_map(|f| f.3.split_whitespace().last())
        .collect();
    if suites.is_empty() {
        problems.push("no offered cipher suite reported (cipherTests)".to_owned());
    }
    for suite in &suites {
        if !is_aead(suite) {
            problems.push(format!("cipher suite {suite} is not AEAD"));
        }
    }
    for category in WEAK_CATEGORIES {
        let id = format!("cipherlist_{category}");
        match finding(&id) {
            Some(v) if v.starts_with("not offered") => {}
            other => problems.push(format!("{id}: {:?} (want not offered)", other.unwrap_or("(not reported)"))),
        }
    }

    // Severities.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut excluded = Vec::new();
    let mut scan_problems = Vec::new();
    for (section, id, severity, text) in &findings {
        *counts.entry(severity).or_default() += 1;
        if !FAILING.contains(severity) {
            continue;
        }
        if let Some((_, why)) = EXCLUDED.iter().find(|(e, _)| e == id) {
            excluded.push(format!("{id} {severity} {text:?} ({why})"));
        } else if SCAN_PROBLEMS.contains(severity) {
            scan_problems.push(format!("{section}.{id}: {severity}: {text}"));
        } else {
            problems.push(format!("{section}.{id}: {severity}: {text}"));
        }
    }

    println!("testssl.sh {version}");
    println!("  protocols offered: {}", offered.join(", "));
    println!("  suites offered ({}): {}", suites.len(), suites.join(", "));
    println!(
        "  findings by severity: {}",
        counts.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ")
    );
    for e in &excluded {
        println!("  excluded (test certificate): {e}");
    }
    for p in problems.iter().chain(&scan_problems) {
        println!("  FAILED: {p}");
    }
    if problems.is_empty() && !scan_problems.is_empty() {
        return Err(ScanProblems(scan_problems).into());
    }
    let failed = usize::from(!problems.is_empty());
    println!("testssl: {} passed, {failed} failed", 1 - failed);
    if !problems.is_empty() {
        bail!("testssl.sh: {} problem(s): {}", problems.len(), problems.join("; "));
    }
    Ok(())
}

/// Whether an IANA suite name is an AEAD suite (and none of the weak kinds).
fn is_aead(suite: &str) -> bool {
    let weak = ["CBC", "RC4", "3DES", "DES", "NULL", "EXPORT", "anon", "IDEA", "SEED", "MD5"];
    let aead = ["_GCM_", "_CCM", "CHACHA20_POLY1305"];
    !weak.iter().any(|w| suite.contains(w)) && aead.iter().any(|a| suite.contains(a))
}

/// `testssl` from Debian's `testssl.sh` package, installed with apt-get when missing.
fn install_testssl() -> anyhow::Result<PathBuf> {
    let found = || {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("testssl")).find(|p| p.is_file()))
            .unwrap_or_default()
    };
    if let Some(path) = found() {
        return Ok(path);
    }
    // The package lists may be missing on a fresh machine; update them only if needed.
    if util::step("install testssl.sh", &["apt-get", "install", "-y", "testssl.sh"]).is_err() {
        util::step("apt-get update", &["apt-get", "update"])?;
        util::step("install testssl.sh", &["apt-get", "install", "-y", "testssl.sh"])?;
    }
    found().context("`testssl` is not on PATH after installing testssl.sh")
}

/// A CA and a leaf for `localhost` and 127.0.0.1 (ECDSA P-256, valid 90 days: more than
/// testssl.sh's 60-day expiry warning, less than its 398-day validity limit) in `dir`, made
/// with `openssl`; returns the CA, the leaf and the leaf's key.
fn make_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running openssl")?;
        ensure!(out.status.success(), "openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let (ca, ca_key, cert, key, csr) = (p("ca.pem"), p("ca-key.pem"), p("cert.pem"), p("key.pem"), p("leaf.csr"));
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "90",
        "-subj",
        "/CN=portcullis testssl CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&args)?;
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(&args)?;
    let ext = ext.to_string_lossy().into_owned();
    // No -set_serial and no serial file: OpenSSL 3 draws a random 159-bit serial (testssl.sh
    // rates a short one LOW).
    openssl(&[
        "x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-days", "90", "-out", &cert, "-extfile", &ext,
    ])?;
    Ok((ca.into(), cert.into(), key.into()))
}
