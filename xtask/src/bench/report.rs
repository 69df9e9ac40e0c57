//! The report: medians and ratios as a markdown table and JSON, a PNG of the main ratios
//! (matplotlib, from PyPI, in a venv under target/tools), and the machine they come from.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};

use super::loadgen::OHA_VERSION;
use super::policy::PolicyCost;
use super::procs::{command_output, Pinning};
use super::signin::SessionCost;
use super::{RoutesScale, Sample, ScenarioResult, Target, Unit, NOISY_FOREIGN_CPU};
use crate::util;

/// The matplotlib release the chart is drawn with.
const MATPLOTLIB_VERSION: &str = "3.10.7";

/// The machine and the programs the numbers come from.
pub struct Machine {
    nproc: String,
    cpu_model: String,
    memory: String,
    kernel: String,
    os: String,
    rustc: String,
    nginx: String,
    haproxy: String,
    wrk: String,
    h2load: String,
    go: String,
    git: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map_or("?", |v| v.trim_start_matches([' ', '\t', ':']))
            .to_owned();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or_else(|| "?".to_owned(), |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0));
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| s.lines().find_map(|l| Some(l.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_owned())))
            .unwrap_or_else(|| "?".to_owned());
        let root = util::root().display().to_string();
        let git =
            command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".to_owned());
        let dirty = command_output("git", &["-C", &root, "status", "--porcelain"]).is_some();
        let first_line =
            |s: Option<String>| s.and_then(|s| s.lines().next().map(str::to_owned)).unwrap_or_else(|| "?".to_owned());
        // nginx -v writes to stderr.
        let nginx = Command::new("nginx").arg("-v").output().ok().map_or_else(
            || "?".to_owned(),
            |o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: nginx/").to_owned(),
        );
        Self {
            nproc: command_output("nproc", &[]).unwrap_or_else(|| "?".to_owned()),
            cpu_model,
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned()),
            os,
            rustc: command_output("rustc", &["-V"]).unwrap_or_else(|| "?".to_owned()),
            nginx,
            haproxy: first_line(command_output("haproxy", &["-v"]))
                .split(" - ")
                .next()
                .unwrap_or("?")
                .trim_start_matches("HAProxy version ")
                .to_owned(),
            // wrk prints its version in the usage text and exits non-zero.
            wrk: first_line(command_output("wrk", &["-v"])).split(" [").next().unwrap_or("?").to_owned(),
            h2load: first_line(command_output("h2load", &["--version"])),
            go: command_output("go", &["env", "GOVERSION"]).unwrap_or_else(|| "?".to_owned()),
            git: if dirty { format!("{git} (uncommitted changes)") } else { git },
        }
    }
}

/// The medians of one target's samples, each figure on its own.
#[derive(Debug, Clone)]
pub struct Summary {
    pub figure: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub proxy_cpu_us: Option<f64>,
    pub proxy_util: Option<f64>,
    pub upstream_cpu_us: f64,
    pub loadgen_util: f64,
    pub foreign_util_max: f64,
}

/// The median (mean of the two middle values for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Self {
        let opt = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        Self {
            figure: median(samples.iter().map(|s| s.figure)),
            p50_us: median(samples.iter().map(|s| s.load.p50_us)),
            p99_us: median(samples.iter().map(|s| s.load.p99_us)),
            errors: samples.iter().map(|s| s.load.errors).sum(),
            proxy_cpu_us: opt(|s| s.proxy_cpu_us),
            proxy_util: opt(|s| s.proxy_util),
            upstream_cpu_us: median(samples.iter().map(|s| s.upstream_cpu_us)),
            loadgen_util: median(samples.iter().map(|s| s.loadgen_util)),
            foreign_util_max: samples.iter().map(|s| s.foreign_util).fold(0.0, f64::max),
        }
    }
}

pub struct Report {
    pub load_text: String,
    pub runs: usize,
    pub warmup: u64,
    pub duration: u64,
    pub idle: u32,
    pub machine: Machine,
    pub pinning: Pinning,
    pub processes: Vec<Value>,
    pub load_before: f64,
    pub load_after: f64,
    pub results: Vec<ScenarioResult>,
    /// The peers that ran beside Portcullis (`--peers`), in column order.
    pub peers: Vec<Target>,
    /// The peers built for this run: version, and build seconds (`None`: cached).
    pub builds: Vec<(Target, String, Option<f64>)>,
    pub policy: Option<PolicyCost>,
    pub signin: Option<SessionCost>,
    pub routes: Option<RoutesScale>,
}

pub fn fmt_latency(us: f64) -> String {
    if us.is_nan() {
        "–".to_owned()
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Thousands separators, no decimals; one decimal below 100.
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "–".to_owned();
    }
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "–".to_owned()
    }
}

fn timestamp() -> String {
    command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "?".to_owned())
}

/// One row of the results table: a figure's median for each target.
struct Row {
    label: String,
    values: Vec<(Target, f64)>,
    /// For the ratio's reading: is a larger value better?
    higher_is_better: bool,
    format: fn(f64) -> String,
}

impl Row {
    fn get(&self, t: Target) -> Option<f64> {
        self.values.iter().find(|(x, _)| *x == t).map(|(_, v)| *v).filter(|v| !v.is_nan())
    }

    /// Portcullis ÷ `other`.
    fn ratio(&self, other: Target) -> Option<f64> {
        Some(self.get(Target::Portcullis)? / self.get(other)?)
    }
}

fn rows(r: &ScenarioResult) -> Vec<Row> {
    let sums: Vec<(Target, Summary)> = r.targets.iter().map(|t| (t.target, Summary::of(&t.samples))).collect();
    let col = |f: fn(&Summary) -> f64| sums.iter().map(|(t, s)| (*t, f(s))).collect::<Vec<_>>();
    let mut rows = vec![Row {
        label: r.unit.label().to_owned(),
        values: col(|s| s.figure),
        higher_is_better: r.unit.higher_is_better(),
        format: fmt_num,
    }];
    if r.unit != Unit::KiBPerConnection {
        let what = match r.unit {
            Unit::Messages => "round trip",
            Unit::Connections => "connection",
            _ => "request",
        };
        rows.push(Row {
            label: format!("p50 per {what}"),
            values: col(|s| s.p50_us),
            higher_is_better: false,
            format: fmt_latency,
        });
        rows.push(Row {
            label: format!("p99 per {what}"),
            values: col(|s| s.p99_us),
            higher_is_better: false,
            format: fmt_latency,
        });
        let per = match r.unit {
            Unit::Messages => "message",
            Unit::Connections => "connection",
            _ => "response",
        };
        rows.push(Row {
            label: format!("proxy CPU per {per}"),
            values: col(|s| s.proxy_cpu_us.unwrap_or(f64::NAN)),
            higher_is_better: false,
            format: |v| if v.is_nan() { "–".to_owned() } else { format!("{v:.1} µs") },
        });
    }
    rows
}

impl Report {
    /// The targets with a column in the peer table, in column order: those that ran in some
    /// scenario.
    fn columns(&self) -> Vec<Target> {
        Target::ALL
            .iter()
            .copied()
            .filter(|t| self.results.iter().any(|r| r.targets.iter().any(|x| x.target == *t)))
            .collect()
    }

    /// The version of a peer as the report names it, and where it came from.
    fn peer_origin(&self, t: Target) -> String {
        let m = &self.machine;
        let built = self.builds.iter().find(|(x, _, _)| *x == t);
        let version = built.map_or("?", |(_, v, _)| v.as_str());
        match t {
            Target::Nginx => format!("nginx {} (Debian)", m.nginx),
            Target::Haproxy => format!("HAProxy {} (Debian)", m.haproxy),
            Target::Traefik => format!("Traefik {version} (Go modules, {})", m.go),
            Target::Caddy => format!("Caddy {version} (Go modules, {})", m.go),
            Target::Pingora => format!("Pingora {version} (bench/pingora-proxy, release build)"),
            Target::Portcullis | Target::Direct => t.label().to_owned(),
        }
    }

    fn built_version(&self, t: Target) -> Option<&str> {
        self.builds.iter().find(|(x, _, _)| *x == t).map(|(_, v, _)| v.as_str())
    }

    fn noisy(&self) -> bool {
        self.results
            .iter()
            .chain(self.policy.as_ref().map(|p| &p.result))
            .chain(self.signin.as_ref().map(|p| &p.result))
            .flat_map(|r| r.targets.iter().flat_map(|t| &t.samples))
            .any(|s| s.foreign_util > NOISY_FOREIGN_CPU)
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::new();
        let peers: Vec<&str> = self.peers.iter().map(|t| t.label()).collect();
        let title =
            if peers.is_empty() { "Portcullis".to_owned() } else { format!("Portcullis and {}", peers.join(", ")) };
        let _ = writeln!(md, "# {title}, {}\n", timestamp());
        let _ = writeln!(
            md,
            "- machine: {} CPUs ({}), {} memory, {}, kernel {}; {}",
            m.nproc, m.cpu_model, m.memory, m.os, m.kernel, m.rustc
        );
        let origins: Vec<String> = self.peers.iter().map(|&t| self.peer_origin(t)).collect();
        let _ = writeln!(
            md,
            "- code: Portcullis git {} (release build){}",
            m.git,
            if origins.is_empty() { String::new() } else { format!("; peers: {}", origins.join(", ")) }
        );
        if !self.builds.is_empty() {
            let times: Vec<String> = self
                .builds
                .iter()
                .map(|(t, _, secs)| match secs {
                    Some(s) => format!("{} {s:.0} s", t.label()),
                    None => format!("{} cached", t.label()),
                })
                .collect();
            let _ = writeln!(md, "- peer builds in this run: {}", times.join(", "));
        }
        if !self.peers.is_empty() {
            let _ = writeln!(md, "- Envoy is not among the peers: neither Debian nor any registry this machine reaches has a package of it");
        }
        let _ = writeln!(md, "- {}", self.pinning.describe());
        let _ = writeln!(md, "- load: {}; {}, {}", self.load_text, m.wrk, m.h2load);
        let _ = writeln!(
            md,
            "- runs: {} s warm-up per target, then {} rounds of {} s, each round running every target once in turn; every figure is the median of its runs",
            self.warmup, self.runs, self.duration
        );
        let _ = writeln!(md, "- ratios: Portcullis ÷ the other target, from the same run. For rates above 1 means Portcullis is ahead; for latency, CPU and memory below 1 does");
        let _ = writeln!(md, "- percentiles: wrk's own HdrHistogram (`--latency`); h2load: nearest rank over every 2xx request in its `--log-file`; oha: its own; portcullis-loadgen: nearest rank over every round trip");
        let procs: Vec<String> = self
            .processes
            .iter()
            .map(|p| {
                format!(
                    "{} on CPU {} ({} threads)",
                    p["name"].as_str().unwrap_or("?"),
                    p["cpus_allowed"].as_str().unwrap_or("?"),
                    p["threads"]
                )
            })
            .collect();
        let _ = writeln!(md, "- processes as measured: {}", procs.join(", "));
        let _ = writeln!(
            md,
            "- load average (1 min): {:.2} before the build, {:.2} at the end\n",
            self.load_before, self.load_after
        );
        if !self.results.is_empty() {
            self.peer_tables(&mut md);
        }
        if let Some(p) = &self.policy {
            policy_section(&mut md, p);
        }
        if let Some(s) = &self.signin {
            signin_section(&mut md, s);
        }
        self.scale_section(&mut md);
        md
    }

    /// The peer comparison: the results table, errors, where Portcullis is behind, and
    /// where the CPU time goes.
    fn peer_tables(&self, md: &mut String) {
        let columns = self.columns();
        let others: Vec<Target> = columns.iter().copied().filter(|t| *t != Target::Portcullis).collect();
        let names: Vec<&str> = others.iter().map(|t| t.label()).collect();
        let _ = writeln!(md, "![Portcullis against {} (main figure of each scenario)](latest.png)\n", names.join(", "));
        let heads: Vec<String> = columns.iter().map(|t| t.label().to_owned()).collect();
        let ratio_heads: Vec<String> = others.iter().map(|t| format!("÷ {}", t.label())).collect();
        let _ = writeln!(md, "| scenario | figure | {} | {} |", heads.join(" | "), ratio_heads.join(" | "));
        let _ = writeln!(md, "|---|---|{}", "---:|".repeat(columns.len() + others.len()));
        let mut behind = Vec::new();
        for r in &self.results {
            for (i, row) in rows(r).iter().enumerate() {
                let cell = |t: Target| row.get(t).map_or_else(|| "–".to_owned(), |v| (row.format)(v));
                let head =
                    if i == 0 { format!("**{}**: {} ({})", r.name, r.title, r.tool.name()) } else { String::new() };
                let cells: Vec<String> = columns.iter().map(|&t| cell(t)).collect();
                let ratios: Vec<String> =
                    others.iter().map(|&t| row.ratio(t).map_or_else(|| "–".to_owned(), fmt_ratio)).collect();
                let _ = writeln!(md, "| {head} | {} | {} | {} |", row.label, cells.join(" | "), ratios.join(" | "));
                for &peer in others.iter().filter(|t| **t != Target::Direct) {
                    if let Some(x) = row.ratio(peer) {
                        // Within 3 % is a tie at this run-to-run spread.
                        let worse = if row.higher_is_better { x < 0.97 } else { x > 1.03 };
                        if worse {
                            behind.push(format!("{} {} vs {} ({})", r.name, row.label, peer.label(), fmt_ratio(x)));
                        }
                    }
                }
            }
        }
        let _ = writeln!(
            md,
            "\n–: not measured. `idle-tls` has no direct path (the upstream speaks no TLS); `h3` and `h2-oha` run against Portcullis and direct only (no peer here serves HTTP/3, and `h2-oha` is its HTTP/2 baseline from the same process and client)."
        );
        let errors: Vec<String> = self
            .results
            .iter()
            .flat_map(|r| {
                r.targets.iter().filter_map(move |t| {
                    let e: u64 = t.samples.iter().map(|s| s.load.errors).sum();
                    (e > 0).then(|| format!("{} {}: {e}", r.name, t.target.label()))
                })
            })
            .collect();
        let _ = writeln!(
            md,
            "\nErrors (non-2xx, failed streams or connections, wrong echoes), all runs: {}.",
            if errors.is_empty() { "none".to_owned() } else { errors.join(", ") }
        );
        let _ = writeln!(
            md,
            "\n**Behind a peer by more than 3 %** (Portcullis ÷ peer): {}.",
            if behind.is_empty() { "nowhere".to_owned() } else { behind.join("; ") }
        );

        let _ = writeln!(md, "\n## Where the time goes\n\nMedians; CPU time from /proc/<pid>/stat around each run (a proxy's whole process tree: nginx's master and worker).\n");
        let _ = writeln!(md, "| scenario | target | proxy CPU busy | upstream CPU per response | load generator CPU busy | other processes, worst run |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
        for r in self.results.iter().filter(|r| r.unit != Unit::KiBPerConnection) {
            for t in &r.targets {
                let s = Summary::of(&t.samples);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1} µs | {:.0}% | {:.0}% of a CPU |",
                    r.name,
                    t.target.label(),
                    s.proxy_util.map_or_else(|| "–".to_owned(), |u| format!("{:.0}%", u * 100.0)),
                    s.upstream_cpu_us,
                    s.loadgen_util * 100.0,
                    s.foreign_util_max * 100.0
                );
            }
        }
        if self.noisy() {
            let _ = writeln!(
                md,
                "\n**Noisy:** processes not started by the benchmark used more than {:.0}% of a CPU during some runs (see the last column); re-run on a quiet machine.",
                NOISY_FOREIGN_CPU * 100.0
            );
        }
    }

    /// Start-up with many routes, and pointers to the other scale benchmarks and findings.
    fn scale_section(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Scale\n");
        if let Some(rs) = &self.routes {
            let per_route = (rs.rss_kib.1 - rs.rss_kib.0) / (rs.routes - 1) as f64 * 1024.0;
            let _ = writeln!(md, "Snapshot build with {} routes (`portcullis serve`, medians of {} starts each; the route mix of `benches/route_lookup.rs`):\n", fmt_num(rs.routes as f64), rs.runs);
            let _ = writeln!(md, "| | 1 route | {} routes |", fmt_num(rs.routes as f64));
            let _ = writeln!(md, "|---|---:|---:|");
            let _ = writeln!(
                md,
                "| start to `/readyz` (parse, validate, compile, bind) | {:.0} ms | {:.0} ms |",
                rs.ready_ms.0, rs.ready_ms.1
            );
            let _ = writeln!(
                md,
                "| resident memory once ready | {:.1} MiB | {:.1} MiB ({per_route:.0} bytes per route) |",
                rs.rss_kib.0 / 1024.0,
                rs.rss_kib.1 / 1024.0
            );
        }
        let _ = writeln!(md, "\nRoute lookup among 10,001 routes: `cargo bench --bench route_lookup` (criterion; figures in bench/README.md). Controller with 1,000 Ingresses against a real API server: `cargo xtask bench controller`, [controller-scale.md](controller-scale.md).");
        if let Ok(findings) = std::fs::read_to_string(util::root().join("bench/findings.md")) {
            let _ = writeln!(md, "\n{}", findings.trim_end());
        }
    }

    pub fn json(&self) -> Value {
        let m = &self.machine;
        let sample = |s: &Sample| {
            json!({
                "figure": s.figure, "rps": s.load.rps, "p50_us": s.load.p50_us, "p99_us": s.load.p99_us,
                "count": s.load.requests, "errors": s.load.errors,
                "bytes_per_response": s.load.bytes_per_response,
                "proxy_cpu_us": s.proxy_cpu_us, "proxy_cpu_busy": s.proxy_util,
                "upstream_cpu_us": s.upstream_cpu_us,
                "loadgen_cpu_busy": s.loadgen_util, "foreign_cpu": s.foreign_util, "foreign_busiest": s.foreign_top,
            })
        };
        let scenarios: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let mut targets = serde_json::Map::new();
                for t in &r.targets {
                    let s = Summary::of(&t.samples);
                    targets.insert(
                        t.target.key().to_owned(),
                        json!({
                            "url": t.url,
                            "median": {
                                "figure": s.figure, "p50_us": s.p50_us, "p99_us": s.p99_us, "errors": s.errors,
                                "proxy_cpu_us": s.proxy_cpu_us, "proxy_cpu_busy": s.proxy_util,
                                "upstream_cpu_us": s.upstream_cpu_us, "loadgen_cpu_busy": s.loadgen_util,
                                "foreign_cpu_max": s.foreign_util_max,
                            },
                            "runs": t.samples.iter().map(sample).collect::<Vec<_>>(),
                        }),
                    );
                }
                let mut ratios = serde_json::Map::new();
                for other in self.columns().into_iter().filter(|t| *t != Target::Portcullis) {
                    let mut by_row = serde_json::Map::new();
                    for (i, row) in rows(r).iter().enumerate() {
                        let key = match i {
                            0 => "figure",
                            1 => "p50",
                            2 => "p99",
                            _ => "proxy_cpu",
                        };
                        by_row.insert(key.to_owned(), json!(row.ratio(other).filter(|x| x.is_finite())));
                    }
                    ratios.insert(format!("portcullis_over_{}", other.key()), Value::Object(by_row));
                }
                json!({
                    "name": r.name, "title": r.title, "tool": r.tool.name(),
                    "unit": r.unit.label(), "higher_is_better": r.unit.higher_is_better(),
                    "targets": targets, "ratios": ratios,
                })
            })
            .collect();
        json!({
            "generated_at": timestamp(),
            "machine": {
                "nproc": m.nproc, "cpu_model": m.cpu_model, "memory": m.memory, "os": m.os, "kernel": m.kernel,
                "rustc": m.rustc, "nginx": m.nginx, "haproxy": m.haproxy, "wrk": m.wrk, "h2load": m.h2load,
                "go": m.go,
                "traefik": self.built_version(Target::Traefik), "caddy": self.built_version(Target::Caddy),
                "pingora": self.built_version(Target::Pingora),
                "oha": OHA_VERSION, "git": m.git,
                "load_average_1m_before": self.load_before, "load_average_1m_after": self.load_after,
                "noisy": self.noisy(),
            },
            "settings": {
                "duration_s": self.duration, "runs": self.runs, "warmup_s": self.warmup, "idle_connections": self.idle,
                "load": self.load_text,
                "pinning": self.pinning.describe(),
                "aggregate": "median of the runs for each figure; ratio = Portcullis median / other median",
            },
            "peers": self.peers.iter().map(|t| json!({ "key": t.key(), "label": t.label(), "origin": self.peer_origin(*t) })).collect::<Vec<_>>(),
            "peer_builds": self.builds.iter().map(|(t, v, secs)| json!({ "peer": t.key(), "version": v, "build_s": secs })).collect::<Vec<_>>(),
            "processes": self.processes,
            "scenarios": scenarios,
            "policy": self.policy.as_ref().map(policy_json),
            "signin": self.signin.as_ref().map(signin_json),
            "routes_scale": self.routes.as_ref().map(|r| json!({
                "routes": r.routes, "starts": r.runs,
                "ready_ms": { "one_route": r.ready_ms.0, "many_routes": r.ready_ms.1 },
                "rss_kib": { "one_route": r.rss_kib.0, "many_routes": r.rss_kib.1 },
            })),
        })
    }
}

/// Issue 15's target for the policy scenario: a route whose policy checks a bearer token
/// keeps at least this share of the req/s of the same route without a policy.
const POLICY_TARGET: f64 = 0.90;

/// The `policy` scenario's table: each endpoint's medians and its req/s ÷ the baseline's.
fn policy_section(md: &mut String, p: &PolicyCost) {
    let r = &p.result;
    let _ = writeln!(md, "\n## Access policy (`policy`)\n");
    let _ = writeln!(
        md,
        "{} ({}, as `h1`). One Portcullis process, two routes to the same upstream: `open` has no policy; `bearer` has `allow: {{and: [{{authenticated_user: true}}]}}` with the identity provider served by the bench on loopback (RS256, 2048-bit key, a {}-byte token). Checked before the load: `bearer` answers 200 with the token and 401 (`WWW-Authenticate: Bearer`) without one and with a forged one; every response of every run was a 2xx. With keep-alive, the token is verified once per connection and the policy decided on every request. The JWKS server answered {} request(s) during the runs (it is fetched at start-up and every 5 minutes).\n",
        r.title,
        r.tool.name(),
        p.token_bytes,
        p.jwks_fetches
    );
    let _ = writeln!(
        md,
        "| route | token sent | req/s | p50 | p99 | proxy CPU per response | req/s ÷ `open` without a token |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for (i, (t, label)) in r.targets.iter().zip(&p.labels).enumerate() {
        let s = Summary::of(&t.samples);
        let (route, token) = label.split_once('+').map_or((*label, "no"), |(route, _)| (route, "yes"));
        let _ = writeln!(
            md,
            "| `{route}` | {token} | {} | {} | {} | {} | {} |",
            fmt_num(s.figure),
            fmt_latency(s.p50_us),
            fmt_latency(s.p99_us),
            s.proxy_cpu_us.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} µs")),
            fmt_ratio(p.ratio(i))
        );
    }
    let last = r.targets.len() - 1;
    let headline = p.ratio(last);
    let _ = writeln!(
        md,
        "\n**Policy cost:** `bearer` ÷ `open` = {} ({}; the issue's target: at least {POLICY_TARGET:.2}, within 10 %); ÷ `open` with the same token = {}.",
        fmt_ratio(headline),
        if headline >= POLICY_TARGET { "met" } else { "**missed**" },
        fmt_ratio(p.rps(last) / p.rps(1))
    );
}

fn policy_json(p: &PolicyCost) -> Value {
    let endpoints: Vec<Value> = p
        .result
        .targets
        .iter()
        .zip(&p.labels)
        .enumerate()
        .map(|(i, (t, label))| {
            let s = Summary::of(&t.samples);
            json!({
                "endpoint": label, "url": t.url,
                "median": { "rps": s.figure, "p50_us": s.p50_us, "p99_us": s.p99_us, "errors": s.errors,
                    "proxy_cpu_us": s.proxy_cpu_us, "proxy_cpu_busy": s.proxy_util },
                "runs": t.samples.iter().map(|s| s.figure).collect::<Vec<_>>(),
                "rps_over_open": p.ratio(i),
            })
        })
        .collect();
    let last = p.result.targets.len() - 1;
    json!({
        "title": p.result.title, "tool": p.result.tool.name(), "token_bytes": p.token_bytes,
        "jwks_fetches": p.jwks_fetches, "endpoints": endpoints,
        "bearer_over_open": p.ratio(last), "bearer_over_open_with_token": p.rps(last) / p.rps(1),
        "target": POLICY_TARGET, "met": p.ratio(last) >= POLICY_TARGET,
    })
}

/// Issue 16's target for the signin scenario: a route that checks a session cookie and
/// sets the identity assertion keeps at least this share of the req/s of the same route
/// without a policy.
const SIGNIN_TARGET: f64 = 0.85;

/// The `signin` scenario's table: each endpoint's medians and its req/s ÷ the baseline's.
fn signin_section(md: &mut String, p: &SessionCost) {
    let r = &p.result;
    let _ = writeln!(md, "\n## Browser sessions (`signin`)\n");
    let _ = writeln!(
        md,
        "{} ({}, as `h1`). One Portcullis process, two routes to the same upstream: `open` has no policy; `session` has `allow_any_authenticated_user: true`, so it admits a signed-in session cookie and sends the upstream an `X-Portcullis-Jwt-Assertion` (ES256). The identity provider is node's `oidc-provider` on loopback (node {}); the harness signed alice in through the sign-in host, the provider's login and consent forms and the hand-off ({} provider requests), and wrk sends the `_portcullis` cookie it got ({} bytes; the upstream received a {}-byte assertion). Checked before the load: `session` answers 200 with the cookie and the upstream got an assertion naming alice for the route's host; 401 without a cookie (a 302 to the sign-in host for a browser) and with a tampered one; every response of every run was a 2xx. With keep-alive the cookie is opened once per connection and the assertion signed once a minute per connection. The provider answered {} request(s) during the runs.\n",
        r.title,
        r.tool.name(),
        p.node,
        p.provider_requests_sign_in,
        p.cookie_bytes,
        p.assertion_bytes,
        p.provider_requests_runs
    );
    let _ = writeln!(
        md,
        "| route | cookie sent | req/s | p50 | p99 | proxy CPU per response | req/s ÷ `open` without a cookie |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for (i, (t, label)) in r.targets.iter().zip(&p.labels).enumerate() {
        let s = Summary::of(&t.samples);
        let (route, cookie) = label.split_once('+').map_or((*label, "no"), |(route, _)| (route, "yes"));
        let _ = writeln!(
            md,
            "| `{route}` | {cookie} | {} | {} | {} | {} | {} |",
            fmt_num(s.figure),
            fmt_latency(s.p50_us),
            fmt_latency(s.p99_us),
            s.proxy_cpu_us.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} µs")),
            fmt_ratio(p.ratio(i))
        );
    }
    let last = r.targets.len() - 1;
    let headline = p.ratio(last);
    let _ = writeln!(
        md,
        "\n**Session cost:** `session` ÷ `open` = {} ({}; the issue's target: at least {SIGNIN_TARGET:.2}); ÷ `open` with the same cookie = {}. Median of the per-round ratios (each round's `session` ÷ that round's `open`, seconds apart): {}.",
        fmt_ratio(headline),
        if headline >= SIGNIN_TARGET { "met" } else { "**missed**" },
        fmt_ratio(p.rps(last) / p.rps(1)),
        fmt_ratio(p.round_ratio(last))
    );
}

fn signin_json(p: &SessionCost) -> Value {
    let endpoints: Vec<Value> = p
        .result
        .targets
        .iter()
        .zip(&p.labels)
        .enumerate()
        .map(|(i, (t, label))| {
            let s = Summary::of(&t.samples);
            json!({
                "endpoint": label, "url": t.url,
                "median": { "rps": s.figure, "p50_us": s.p50_us, "p99_us": s.p99_us, "errors": s.errors,
                    "proxy_cpu_us": s.proxy_cpu_us, "proxy_cpu_busy": s.proxy_util },
                "runs": t.samples.iter().map(|s| s.figure).collect::<Vec<_>>(),
                "rps_over_open": p.ratio(i),
            })
        })
        .collect();
    let last = p.result.targets.len() - 1;
    json!({
        "title": p.result.title, "tool": p.result.tool.name(), "node": p.node,
        "cookie_bytes": p.cookie_bytes, "assertion_bytes": p.assertion_bytes,
        "provider_requests": { "sign_in": p.provider_requests_sign_in, "runs": p.provider_requests_runs },
        "endpoints": endpoints,
        "session_over_open": p.ratio(last), "session_over_open_with_cookie": p.rps(last) / p.rps(1),
        "session_over_open_per_round_median": p.round_ratio(last),
        "target": SIGNIN_TARGET, "met": p.ratio(last) >= SIGNIN_TARGET,
    })
}

/// A venv with matplotlib at `target/tools/bench-venv/` unless one with the pinned version is
/// there; returns its python.
pub fn install_matplotlib() -> anyhow::Result<PathBuf> {
    util::python_venv("bench-venv", "matplotlib", MATPLOTLIB_VERSION, "matplotlib.pyplot")
}

/// Draws the main ratios (`bench/chart.py`) from the JSON into a PNG.
pub fn chart(python: &Path, json: &Path, png: &Path) -> anyhow::Result<()> {
    let script = util::root().join("bench/chart.py");
    let status = Command::new(python)
        .arg(&script)
        .arg(json)
        .arg(png)
        .env("MPLBACKEND", "Agg")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(status.success(), "{} failed ({status})", script.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(999.0), "999");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_latency(850.0), "850 µs");
        assert_eq!(fmt_latency(10460.0), "10.46 ms");
        assert_eq!(fmt_latency(f64::NAN), "–");
    }

    fn sample(figure: f64) -> Sample {
        let load = super::super::loadgen::LoadResult {
            rps: figure,
            p50_us: 100.0,
            p99_us: 200.0,
            requests: 1000,
            errors: 0,
            bytes_per_response: 100.0,
        };
        Sample {
            figure,
            load,
            proxy_cpu_us: Some(10.0),
            proxy_util: Some(1.0),
            upstream_cpu_us: 5.0,
            loadgen_util: 0.5,
            foreign_util: 0.0,
            foreign_top: None,
        }
    }

    fn report(targets: &[(Target, f64)]) -> Report {
        let runs = targets
            .iter()
            .map(|&(target, f)| super::super::TargetRuns { target, url: String::new(), samples: vec![sample(f)] })
            .collect();
        let result = ScenarioResult {
            name: "h1",
            title: "t",
            tool: super::super::loadgen::Tool::Wrk,
            unit: Unit::Requests,
            targets: runs,
        };
        let q = || "?".to_owned();
        Report {
            load_text: String::new(),
            runs: 1,
            warmup: 0,
            duration: 1,
            idle: 1,
            machine: Machine {
                nproc: q(),
                cpu_model: q(),
                memory: q(),
                kernel: q(),
                os: q(),
                rustc: q(),
                nginx: "1.22.1".into(),
                haproxy: "2.6".into(),
                wrk: q(),
                h2load: q(),
                go: "go1.26.8".into(),
                git: q(),
            },
            pinning: Pinning { proxy: None, rest: None },
            processes: Vec::new(),
            load_before: 0.0,
            load_after: 0.0,
            results: vec![result],
            peers: targets.iter().map(|t| t.0).filter(|t| Target::PEERS.contains(t)).collect(),
            builds: vec![(Target::Traefik, "v3.6.12".into(), Some(500.0)), (Target::Pingora, "0.9.1".into(), None)],
            policy: None,
            signin: None,
            routes: None,
        }
    }

    #[test]
    fn every_peer_gets_a_column_and_a_ratio() {
        let all: Vec<(Target, f64)> =
            Target::ALL.iter().zip([100.0, 50.0, 200.0, 25.0, 100.0, 400.0, 80.0]).map(|(t, f)| (*t, f)).collect();
        let r = report(&all);
        let md = r.markdown();
        assert!(
            md.contains("| scenario | figure | Portcullis | nginx | HAProxy | Traefik | Caddy | Pingora | direct | ÷ nginx | ÷ HAProxy | ÷ Traefik | ÷ Caddy | ÷ Pingora | ÷ direct |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| req/s | 100 | 50.0 | 200 | 25.0 | 100 | 400 | 80.0 | 2.00 | 0.50 | 4.00 | 1.00 | 0.25 | 1.25 |"
            ),
            "{md}"
        );
        assert!(md.contains("h1 req/s vs HAProxy (0.50)") && md.contains("h1 req/s vs Pingora (0.25)"), "{md}");
        assert!(!md.contains("vs direct ("), "direct is the limit, not a peer to be behind");
        assert!(md.contains("Traefik v3.6.12 (Go modules, go1.26.8)") && md.contains("Traefik 500 s, Pingora cached"));
        let json = r.json();
        let ratios = &json["scenarios"][0]["ratios"];
        for (key, want) in
            [("nginx", 2.0), ("haproxy", 0.5), ("traefik", 4.0), ("caddy", 1.0), ("pingora", 0.25), ("direct", 1.25)]
        {
            let got = ratios[format!("portcullis_over_{key}")]["figure"].as_f64().unwrap();
            assert!((got - want).abs() < 1e-9, "{key}: {got}");
        }
        assert_eq!(json["machine"]["traefik"], "v3.6.12");
        assert_eq!(json["peers"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn only_the_peers_that_ran_get_columns() {
        let r = report(&[(Target::Portcullis, 100.0), (Target::Caddy, 50.0), (Target::Direct, 200.0)]);
        let md = r.markdown();
        assert!(md.contains("| scenario | figure | Portcullis | Caddy | direct | ÷ Caddy | ÷ direct |"), "{md}");
        let ratios = r.json()["scenarios"][0]["ratios"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(ratios, ["portcullis_over_caddy", "portcullis_over_direct"]);
    }

    #[test]
    fn medians() {
        assert!((median([3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median([4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(median([]).is_nan());
    }
}
