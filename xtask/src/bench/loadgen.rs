//! The load generators: installing the ones that are not Debian packages, and reading what
//! each prints.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::util;

/// oha, the load generator of the HTTP/3 scenario (neither wrk nor Debian's h2load speaks
/// HTTP/3) and of its HTTP/2 twin, so that the two compare like with like. Built with cargo
/// from crates.io with its `http3` feature, at this version, into `target/tools/`.
pub const OHA_VERSION: &str = "1.16.0";

/// A load generator. Each prints its own summary; the harness reads it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// HTTP/1.1 (keep-alive), closed loop.
    Wrk,
    /// HTTP/2, closed loop, `-c` connections × `-m` streams.
    H2load,
    /// HTTP/3 in the `h3` scenario's proxied runs, HTTP/2 otherwise (h2c to the upstream).
    Oha,
    /// `portcullis-loadgen ws-echo`: WebSocket messages, closed loop.
    WsEcho,
    /// `portcullis-loadgen handshake`: a new connection (TLS when the URL is https) per request.
    Handshake,
    /// `portcullis-loadgen hold`: opens connections and keeps them idle.
    Hold,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::H2load => "h2load",
            Tool::Oha => "oha",
            Tool::WsEcho => "portcullis-loadgen ws-echo",
            Tool::Handshake => "portcullis-loadgen handshake",
            Tool::Hold => "portcullis-loadgen hold",
        }
    }
}

/// Builds oha with HTTP/3 into `target/tools/oha-<version>/` unless it is there (a few
/// minutes, once). Installed into a scratch directory renamed into place at the end, so an
/// interrupted build is never mistaken for a finished one.
pub fn install_oha() -> anyhow::Result<PathBuf> {
    let tools = util::root().join("target/tools");
    let dir = tools.join(format!("oha-{OHA_VERSION}"));
    let binary = dir.join("bin/oha");
    if binary.is_file() {
        return Ok(binary);
    }
    let scratch = tools.join(format!("oha-{OHA_VERSION}.{}.tmp", std::process::id()));
    let root = scratch.display().to_string();
    util::step(
        "build oha (HTTP/3 load generator)",
        &["cargo", "install", "oha", "--version", OHA_VERSION, "--features", "http3", "--locked", "--root", &root],
    )?;
    if std::fs::rename(&scratch, &dir).is_err() && binary.is_file() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    anyhow::ensure!(binary.is_file(), "{} is missing after cargo install", binary.display());
    Ok(binary)
}

/// Parses oha's `--output-format json`: requests per second and percentiles (in seconds)
/// as oha measured them, responses by status, and errors other than the requests oha itself
/// cut off at the end of the run.
pub fn parse_oha(out: &str) -> anyhow::Result<LoadResult> {
    let v: Value = serde_json::from_str(out).context("oha's JSON output")?;
    let number = |v: &Value, what: &str| v.as_f64().with_context(|| format!("oha's JSON has no {what}"));
    let mut requests = 0u64;
    let mut errors = 0u64;
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            requests += n;
            if !code.starts_with('2') {
                errors += n;
            }
        }
    }
    if let Some(errs) = v["errorDistribution"].as_object() {
        errors += errs
            .iter()
            .filter(|(e, _)| !e.contains("aborted due to deadline"))
            .filter_map(|(_, n)| n.as_u64())
            .sum::<u64>();
    }
    Ok(LoadResult {
        rps: number(&v["summary"]["requestsPerSec"], "requestsPerSec")?,
        p50_us: number(&v["latencyPercentiles"]["p50"], "p50")? * 1e6,
        p99_us: number(&v["latencyPercentiles"]["p99"], "p99")? * 1e6,
        requests,
        errors,
        bytes_per_response: v["summary"]["sizePerRequest"].as_f64().unwrap_or(0.0),
    })
}

/// What a load generator reported for one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses received (any status).
    pub requests: u64,
    /// Non-2xx responses, socket errors, failed or timed-out streams.
    pub errors: u64,
    /// Bytes received per response, headers included (the echo grows with the headers the
    /// proxy adds).
    pub bytes_per_response: f64,
}

/// Parses a wrk duration such as `850.00us`, `1.75ms` or `1.02s` into microseconds.
fn parse_wrk_time(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// Parses a wrk size such as `32.66MB` (binary units) into bytes.
fn parse_wrk_size(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// Reads wrk's `--latency` report: `Requests/sec`, the latency distribution (wrk records
/// every request in an HdrHistogram, microsecond resolution), `N requests in Ts, X read`,
/// and the error lines that wrk prints only when non-zero.
pub fn parse_wrk(out: &str) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    let (mut p50, mut p99, mut rps, mut read) = (None, None, None, None);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", t] => p50 = parse_wrk_time(t),
            ["99%", t] => p99 = parse_wrk_time(t),
            ["Requests/sec:", v] => rps = v.parse().ok(),
            [n, "requests", "in", _, size, "read"] => {
                r.requests = n.parse().context("wrk request count")?;
                read = parse_wrk_size(size);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                r.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>();
            }
            _ => {}
        }
    }
    let (Some(p50), Some(p99), Some(rps)) = (p50, p99, rps) else {
        bail!("could not read wrk's output (was --latency given?):\n{out}");
    };
    r.p50_us = p50;
    r.p99_us = p99;
    r.rps = rps;
    r.bytes_per_response = read.unwrap_or(0.0) / r.requests.max(1) as f64;
    Ok(r)
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`% of all
/// values at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// Reads h2load's summary (req/s from `finished in`, counts from `requests:` and
/// `status codes:`, bytes from `traffic:`) and computes p50/p99 from its `--log-file`,
/// which has one line per request: start time, status, microseconds until the end of the
/// response. Only 2xx responses go into the percentiles; h2load itself prints only
/// min/max/mean/sd.
pub fn parse_h2load(out: &str, request_log: &str) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    let mut rps = None;
    let (mut done, mut ok2xx, mut failed, mut bytes) = (0u64, 0u64, 0u64, 0.0);
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            rps = rest.split(", ").find_map(|f| f.strip_suffix(" req/s")).and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for field in rest.split(", ") {
                let (n, what) = field.split_once(' ').unwrap_or((field, ""));
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "done" => done = n,
                    "failed" | "errored" | "timeout" => failed += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            ok2xx = rest.split(", ").find_map(|f| f.strip_suffix(" 2xx")).and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("traffic: ") {
            // "29.08MB (30492716) total, ..."
            bytes = rest.split(['(', ')']).nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        }
    }
    let Some(rps) = rps else { bail!("could not read h2load's output:\n{out}") };
    let mut latencies: Vec<u64> = request_log
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (_, status, micros) =
                (cols.next()?, cols.next()?.parse::<i32>().ok()?, cols.next()?.parse::<u64>().ok()?);
            (200..300).contains(&status).then_some(micros)
        })
        .collect();
    latencies.sort_unstable();
    r.rps = rps;
    r.requests = done;
    // `failed` (which includes errored and timed-out streams) and the non-2xx responses
    // overlap: 4xx/5xx count as both. Either alone is a lower bound; take the larger.
    r.errors = failed.max(done.saturating_sub(ok2xx));
    r.p50_us = percentile(&latencies, 50.0);
    r.p99_us = percentile(&latencies, 99.0);
    r.bytes_per_response = bytes / done.max(1) as f64;
    Ok(r)
}

/// Reads the line `portcullis-loadgen hold` prints once its connections are open: how many
/// are. Fails if any could not be opened.
pub fn parse_loadgen_hold(line: &str) -> anyhow::Result<u64> {
    let v: Value =
        serde_json::from_str(line.trim()).with_context(|| format!("portcullis-loadgen hold printed {line:?}"))?;
    let open = v["open"].as_u64().with_context(|| format!("no \"open\" in {line}"))?;
    let failed = v["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        bail!("{failed} connections could not be opened ({open} were): {line}");
    }
    Ok(open)
}

/// Reads the one JSON line `portcullis-loadgen` prints: the rate (`msgs_per_sec` or
/// `conns_per_sec`), the count it is a rate of, percentiles and errors.
pub fn parse_loadgen(out: &str) -> anyhow::Result<LoadResult> {
    let line =
        out.lines().rev().find(|l| l.trim_start().starts_with('{')).context("portcullis-loadgen printed no JSON")?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("portcullis-loadgen's JSON: {line}"))?;
    let num = |key: &str| v[key].as_f64();
    let rps = num("msgs_per_sec").or_else(|| num("conns_per_sec")).with_context(|| format!("no rate in {line}"))?;
    let count = v["messages"].as_u64().or_else(|| v["connections"].as_u64()).unwrap_or(0);
    Ok(LoadResult {
        rps,
        p50_us: num("p50_us").unwrap_or(f64::NAN),
        p99_us: num("p99_us").unwrap_or(f64::NAN),
        requests: count,
        errors: v["errors"].as_u64().unwrap_or(0),
        bytes_per_response: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:18080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.63ms    2.12ms  25.56ms   89.16%
    Req/Sec    40.03k    12.27k   65.13k    73.33%
  Latency Distribution
     50%  850.00us
     75%    1.75ms
     90%    4.01ms
     99%   10.46ms
  119842 requests in 3.01s, 32.66MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  39793.80
Transfer/sec:     10.84MB
";

    #[test]
    fn reads_wrk() {
        let r = parse_wrk(WRK).unwrap();
        assert!((r.rps - 39793.80).abs() < 1e-6);
        assert!((r.p50_us - 850.0).abs() < 1e-6);
        assert!((r.p99_us - 10460.0).abs() < 1e-6);
        assert_eq!((r.requests, r.errors), (119_842, 8));
        assert!((r.bytes_per_response - 32.66 * 1024.0 * 1024.0 / 119_842.0).abs() < 1e-6);
    }

    #[test]
    fn reads_h2load() {
        let out = "finished in 3.00s, 25157.00 req/s, 9.69MB/s
requests: 4 total, 5 started, 4 done, 3 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 3 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 29.08MB (400) total, 664.94KB (680903) headers (space savings 89.75%), 27.13MB (28452567) data";
        let log = "1\t200\t300\n2\t200\t100\n3\t-1\t5\n4\t200\t200\n";
        let r = parse_h2load(out, log).unwrap();
        assert!((r.rps - 25157.0).abs() < 1e-6);
        assert_eq!((r.requests, r.errors), (4, 1));
        assert!((r.p50_us - 200.0).abs() < 1e-6);
        assert!((r.p99_us - 300.0).abs() < 1e-6);
        assert!((r.bytes_per_response - 100.0).abs() < 1e-6);
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert!((percentile(&v, 50.0) - 50.0).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile(&[7], 99.0) - 7.0).abs() < 1e-9);
    }

    #[test]
    fn reads_loadgen() {
        let r = parse_loadgen("connecting\n{\"mode\":\"ws-echo\",\"messages\":1000,\"msgs_per_sec\":500.5,\"p50_us\":30,\"p99_us\":90,\"errors\":2}\n").unwrap();
        assert!((r.rps - 500.5).abs() < 1e-9 && (r.p99_us - 90.0).abs() < 1e-9);
        assert_eq!((r.requests, r.errors), (1000, 2));
        let r = parse_loadgen(
            "{\"mode\":\"handshake\",\"connections\":7,\"conns_per_sec\":3.5,\"p50_us\":1,\"p99_us\":2,\"errors\":0}",
        )
        .unwrap();
        assert_eq!(r.requests, 7);
        assert!(parse_loadgen("nothing").is_err());
        assert_eq!(
            parse_loadgen_hold("{\"mode\":\"hold\",\"open\":10000,\"failed\":0,\"seconds\":1.5}\n").unwrap(),
            10_000
        );
        assert!(parse_loadgen_hold("{\"mode\":\"hold\",\"open\":9999,\"failed\":1}").is_err());
    }
}
