//! `cargo xtask bench`: the proxy against the upstream it fronts, same machine, same run.
//!
//! One invocation builds the release binary, starts the demo upstream and two proxies (one
//! with `insecure_server: true` for the plain-HTTP scenarios, one with the default HTTPS
//! listener), pins them to CPUs with `taskset`, and runs every scenario against the proxy
//! and straight against the upstream, interleaved run by run, so each proxy/direct ratio
//! compares numbers taken seconds apart on the same machine state. What is measured and why
//! it is set up this way is in bench/README.md; keep the two in step.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::util;

const USAGE: &str = "usage: cargo xtask bench [options]
  --duration SECS      length of each measured run (default 10)
  --runs N             measured runs per target; the median is reported (default 3)
  --warmup SECS        warm-up run per target before measuring (default 2)
  --connections N      wrk connections, HTTP/1.1 scenario (default 64)
  --h2-clients N       h2load connections, HTTP/2 scenarios (default 16)
  --h2-streams N       h2load concurrent streams per connection (default 8)
  --path PATH          request path on the demo upstream (default /)
  --upstream-scheme S  how the proxies reach the upstream: http (HTTP/1.1, default) or h2c
  --only NAME[,NAME]   run only these scenarios (h1, h2-tls, h2c, h3, h2-oha)
  --out DIR            where latest.md and latest.json go (default bench/results)";

/// The external programs the benchmark drives, and the Debian package that ships each.
const TOOLS: &[(&str, &str)] = &[("wrk", "wrk"), ("h2load", "nghttp2-client"), ("taskset", "util-linux")];

/// How long a load generator may overrun its own `-d`/`-D` before it is killed: every load
/// loop is bounded in time even if a tool hangs on a stuck connection.
const LOADGEN_GRACE: Duration = Duration::from_secs(30);

/// How long the upstream and the proxies get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A userland process not started by the benchmark that used more than this share of one
/// core during a run makes the run "noisy" (another engineer's compile, say).
const NOISY_FOREIGN_CPU: f64 = 0.05;

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    duration: u64,
    runs: usize,
    warmup: u64,
    connections: u32,
    h2_clients: u32,
    h2_streams: u32,
    path: String,
    upstream_scheme: String,
    only: Option<Vec<String>>,
    out: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: 10,
            runs: 3,
            warmup: 2,
            connections: 64,
            h2_clients: 16,
            h2_streams: 8,
            path: "/".to_owned(),
            upstream_scheme: "http".to_owned(),
            only: None,
            out: util::root().join("bench/results"),
        }
    }
}

impl Options {
    /// Parses `--key value` and `--key=value`; `None` when help was asked for.
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> anyhow::Result<T> {
            v.parse().map_err(|_| anyhow::anyhow!("{key}: {v:?} is not a valid number"))
        }
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                println!("{USAGE}");
                return Ok(None);
            }
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            let Some(v) = inline.or_else(|| it.next().cloned()) else {
                bail!("{key} needs a value\n{USAGE}");
            };
            match key {
                "--duration" => o.duration = num(key, &v)?,
                "--runs" => o.runs = num(key, &v)?,
                "--warmup" => o.warmup = num(key, &v)?,
                "--connections" => o.connections = num(key, &v)?,
                "--h2-clients" => o.h2_clients = num(key, &v)?,
                "--h2-streams" => o.h2_streams = num(key, &v)?,
                "--path" => o.path = v,
                "--upstream-scheme" if v == "http" || v == "h2c" => o.upstream_scheme = v,
                "--upstream-scheme" => bail!("--upstream-scheme must be http or h2c"),
                "--only" => o.only = Some(v.split(',').map(str::to_owned).collect()),
                "--out" => o.out = PathBuf::from(v),
                _ => bail!("unknown option {key}\n{USAGE}"),
            }
        }
        if o.duration == 0 || o.runs == 0 {
            bail!("--duration and --runs must be at least 1");
        }
        if o.connections == 0 || o.h2_clients == 0 || o.h2_streams == 0 {
            bail!("--connections, --h2-clients and --h2-streams must be at least 1");
        }
        if !o.path.starts_with('/') {
            bail!("--path must start with /");
        }
        if let Some(only) = &o.only {
            if let Some(bad) = only.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
                bail!("--only: unknown scenario {bad:?} (known: {})", SCENARIOS.join(", "));
            }
        }
        Ok(Some(o))
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|n| n == scenario))
    }
}

/// Scenario names, in the order they run.
const SCENARIOS: &[&str] = &["h1", "h2-tls", "h2c", "h3", "h2-oha"];

/// oha, the load generator of the HTTP/3 scenario (neither wrk nor Debian's h2load speaks
/// HTTP/3) and of its HTTP/2 twin, so that the two compare like with like. Built with cargo
/// from crates.io with its `http3` feature, at this version, into `target/tools/`.
const OHA_VERSION: &str = "1.16.0";

/// Entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(opts) = Options::parse(args)? else { return Ok(()) };
    ensure_tools()?;
    let oha = if opts.wants("h3") || opts.wants("h2-oha") { Some(install_oha()?) } else { None };
    // Taken before the build, which would otherwise dominate it.
    let load_before = load_average();
    let binary = util::release_binary()?;
    let machine = Machine::describe();
    let (busy, top) = foreign_cpu_now(Duration::from_secs(1));
    if busy > NOISY_FOREIGN_CPU {
        eprintln!(
            "\nbench: warning: other processes are using {:.0}% of a CPU right now (busiest: {}); the numbers will be noisy",
            busy * 100.0,
            top.unwrap_or_default()
        );
    }

    // Declared before `services` so that it is dropped after them: the children's logs
    // live in it.
    let tmp = TempDir::new()?;
    let mut services = Services::default();
    let pinning = Pinning::detect();
    eprintln!("\n==> bench: {}", pinning.describe());

    let ports = distinct_ports(13)?;
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let upstream = loopback(ports[0]);
    let plain = ProxyPorts::from_slice(&ports[1..5]);
    let tls = ProxyPorts::from_slice(&ports[5..9]);
    // `codec_type: http3`: the same TLS listener plus quic-ingress on its port over UDP.
    let quic = ProxyPorts::from_slice(&ports[9..13]);

    let mut upstream_cmd = Pinning::command(pinning.rest, &binary);
    upstream_cmd.args(["--log-level", "warn", "demo-upstream", "--listen", &upstream.to_string(), "--name", "bench"]);
    let upstream_pid = services.spawn("upstream", upstream_cmd, tmp.path("upstream.log"))?;
    wait_for_200(&mut services, upstream, &opts.path, "the demo upstream")?;

    let mut proxies = HashMap::new();
    let mut wanted = vec![("plain", &plain, true), ("tls", &tls, false)];
    if oha.is_some() {
        wanted.push(("h3", &quic, false));
    }
    for (label, ports, insecure) in wanted {
        let config = tmp.path(&format!("proxy-{label}.yaml"));
        let mut yaml = proxy_yaml(ports, &opts.upstream_scheme, upstream, insecure);
        if label == "h3" {
            yaml.push_str("codec_type: http3\n");
        }
        std::fs::write(&config, yaml).context("writing the proxy config")?;
        let mut cmd = Pinning::command(pinning.proxy, &binary);
        // A long watch interval: the config never changes, and polling it would only add noise.
        cmd.args(["--log-level", "warn", "serve", "--watch-interval", "1h", "--config"]).arg(&config);
        let pid = services.spawn(&format!("proxy ({label})"), cmd, tmp.path(&format!("proxy-{label}.log")))?;
        wait_for_200(&mut services, ports.admin(), "/readyz", &format!("the {label} proxy's /readyz"))?;
        proxies.insert(label, ProxyHandle { pid, metrics: ports.metrics() });
    }
    // wrk counts 3xx as success, so make sure the plain listener really routes (a listener
    // that redirected to https would otherwise "succeed" very fast).
    wait_for_200(&mut services, plain.main(), &opts.path, "a request through the plain proxy")?;

    let processes: Vec<Value> = services
        .0
        .iter()
        .map(|s| {
            let (allowed, threads) = affinity_and_threads(s.child.id());
            json!({ "name": s.name, "pid": s.child.id(), "cpus_allowed": allowed, "threads": threads })
        })
        .collect();

    let up_url = |p: &str| format!("http://{upstream}{p}");
    let scenarios = [
        Scenario {
            name: "h1",
            title: "HTTP/1.1 keep-alive, plain",
            tool: Tool::Wrk,
            proxy_url: format!("http://{}{}", plain.main(), opts.path),
            direct_url: up_url(&opts.path),
            proxy: proxies["plain"],
        },
        Scenario {
            name: "h2-tls",
            title: "HTTP/2 multiplexed: TLS to the proxy, h2c direct",
            tool: Tool::H2load,
            proxy_url: format!("https://{}{}", tls.main(), opts.path),
            direct_url: up_url(&opts.path),
            proxy: proxies["tls"],
        },
        Scenario {
            name: "h2c",
            title: "HTTP/2 multiplexed, h2c (prior knowledge) both ways",
            tool: Tool::H2load,
            proxy_url: format!("http://{}{}", plain.main(), opts.path),
            direct_url: up_url(&opts.path),
            proxy: proxies["plain"],
        },
    ];
    // HTTP/3 has no direct path (the upstream speaks HTTP/1.1 and h2c), so both oha
    // scenarios compare with h2c to the upstream from the same client; h3 against h2-oha is
    // HTTP/3 beside HTTP/2 through the same proxy process, the same client, the same run.
    let oha_scenarios = oha.as_ref().map(|_| {
        [
            Scenario {
                name: "h3",
                title: "HTTP/3 multiplexed: QUIC to the proxy, h2c direct",
                tool: Tool::Oha,
                proxy_url: format!("https://{}{}", quic.main(), opts.path),
                direct_url: up_url(&opts.path),
                proxy: proxies["h3"],
            },
            Scenario {
                name: "h2-oha",
                title: "HTTP/2 multiplexed, the h3 scenario's client and proxy: TLS to the proxy, h2c direct",
                tool: Tool::Oha,
                proxy_url: format!("https://{}{}", quic.main(), opts.path),
                direct_url: up_url(&opts.path),
                proxy: proxies["h3"],
            },
        ]
    });
    let scenarios: Vec<&Scenario> = scenarios.iter().chain(oha_scenarios.iter().flatten()).collect();
    let bench = Bench { opts: &opts, pinning, tmp: &tmp, upstream_pid, ours: services.pids(), oha };
    let mut results = Vec::new();
    for s in scenarios.into_iter().filter(|s| opts.wants(s.name)) {
        services.check_alive()?;
        results.push(bench.scenario(s)?);
    }
    services.check_alive()?;
    drop(services);

    let report = Report { opts: &opts, machine, pinning, processes, load_before, load_after: load_average(), results };
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let (md_path, json_path) = (opts.out.join("latest.md"), opts.out.join("latest.json"));
    let markdown = report.markdown();
    std::fs::write(&md_path, &markdown).with_context(|| format!("writing {}", md_path.display()))?;
    let json = serde_json::to_string_pretty(&report.json())?;
    std::fs::write(&json_path, json + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    println!("\n{markdown}");
    eprintln!("bench: wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tools, processes, ports

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Installs wrk, h2load and taskset with apt when one is missing: the machines are handed
/// over fresh, so the project has to install what it needs itself.
fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS.iter().filter(|(bin, _)| !on_path(bin)).map(|&(_, pkg)| pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::step("apt-get update", &["apt-get", "update"])?;
    let mut argv = vec!["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends"];
    argv.extend(&missing);
    util::step("install benchmark tools", &argv)?;
    if let Some((bin, pkg)) = TOOLS.iter().find(|(bin, _)| !on_path(bin)) {
        bail!("{bin} is still not on PATH after installing {pkg}");
    }
    Ok(())
}

/// Which CPU each role runs on.
///
/// The proxy gets a CPU of its own; the upstream and the load generator share the other,
/// in the proxied runs and in the direct runs alike. So the work on the shared CPU per
/// request is the same on both paths, and the proxy never steals cycles from (or is starved
/// by) the client or the server. Pinned to one CPU, tokio sizes the proxy's runtime to one
/// worker thread (its default follows the affinity mask), as it would in a one-CPU pod.
#[derive(Clone, Copy, Debug)]
struct Pinning {
    proxy: Option<usize>,
    rest: Option<usize>,
}

impl Pinning {
    /// CPU 0 and CPU 1 when there are at least two; no pinning on a single CPU.
    fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if cpus >= 2 {
            Self { proxy: Some(0), rest: Some(1) }
        } else {
            Self { proxy: None, rest: None }
        }
    }

    fn describe(&self) -> String {
        match (self.proxy, self.rest) {
            (Some(p), Some(r)) => format!(
                "pinning (taskset): proxy on CPU {p}; demo upstream and load generator (wrk/h2load, 1 thread) on CPU {r}, \
                 the same for the proxied and the direct runs; CPU {p} idles during direct runs"
            ),
            _ => "no pinning (fewer than 2 CPUs): proxy, upstream and load generator share the CPU".to_owned(),
        }
    }

    /// `program` wrapped in `taskset -c CPU` when pinned (taskset execs, so the child's
    /// pid is the program's own).
    fn command(cpu: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c.to_string()).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }
}

/// A long-running child: the upstream or a proxy.
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Owns every long-running child. Dropping it (normal end, an error returned with `?`, or
/// a panic) kills and reaps them all, so a failed benchmark never leaves a proxy holding a
/// port or a CPU.
#[derive(Default)]
struct Services(Vec<Service>);

impl Services {
    /// Starts `cmd` with stdout and stderr in `log`; returns its pid.
    fn spawn(&mut self, name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<u32> {
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let pid = child.id();
        eprintln!("==> bench: started {name} (pid {pid}): {cmd:?}");
        self.0.push(Service { name: name.to_owned(), child, log });
        Ok(pid)
    }

    fn pids(&self) -> HashSet<u32> {
        self.0.iter().map(|s| s.child.id()).collect()
    }

    /// Fails, with the end of its log, if any child has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in &mut self.0 {
            if let Some(status) = s.child.try_wait()? {
                bail!("{} exited ({status}); end of its log:\n{}", s.name, tail(&s.log, 20));
            }
        }
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for s in &mut self.0 {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

/// A scratch directory (configs, logs, h2load request logs), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` different free loopback ports (`free_port` binds and releases, so two calls could in
/// principle return the same port).
fn distinct_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n * 20 {
        let p = util::free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
        if ports.len() == n {
            return Ok(ports);
        }
    }
    bail!("could not find {n} distinct free ports")
}

/// The four listener ports of one proxy.
struct ProxyPorts {
    address: u16,
    http_redirect: u16,
    admin: u16,
    metrics: u16,
}

impl ProxyPorts {
    fn from_slice(p: &[u16]) -> Self {
        Self { address: p[0], http_redirect: p[1], admin: p[2], metrics: p[3] }
    }
    fn main(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.address))
    }
    fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }
    fn metrics(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics))
    }
}

/// The config of one benchmark proxy: every listener on its own loopback port and a single
/// catch-all route (`https://*` matches any Host, so the tools can use IP URLs) to the
/// upstream over plain HTTP/1.1 (the usual in-cluster hop; `--upstream-scheme h2c` for
/// HTTP/2 prior knowledge). No certificate is configured:
/// the HTTPS listener makes a self-signed one at start, which h2load does not verify.
fn proxy_yaml(p: &ProxyPorts, scheme: &str, upstream: SocketAddr, insecure: bool) -> String {
    format!(
        "# Generated by `cargo xtask bench`.\n\
         address: \"127.0.0.1:{}\"\n\
         insecure_server: {insecure}\n\
         http_redirect_address: \"127.0.0.1:{}\"\n\
         admin_address: \"127.0.0.1:{}\"\n\
         metrics_address: \"127.0.0.1:{}\"\n\
         routes:\n  - name: bench\n    from: \"https://*\"\n    to: [\"{scheme}://{upstream}\"]\n",
        p.address, p.http_redirect, p.admin, p.metrics
    )
}

/// One HTTP/1.1 GET with `Connection: close` over a plain socket; returns the status code
/// and the whole response (head and body) as text.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok());
    let status = status.with_context(|| format!("not an HTTP response: {:?}", text.lines().next().unwrap_or("")))?;
    Ok((status, text))
}

fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// How many requests a proxy says it has answered: the sum of
/// `portcullis_http_requests_total` on its metrics listener.
fn proxy_answered(metrics: SocketAddr) -> anyhow::Result<u64> {
    let (status, text) = http_get(metrics, "/metrics").context("scraping the proxy's /metrics")?;
    if status != 200 {
        bail!("the proxy's /metrics answered {status}");
    }
    Ok(text
        .lines()
        .filter(|l| l.starts_with("portcullis_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Polls `http://addr/path` until it answers 200, failing early if a child died.
fn wait_for_200(services: &mut Services, addr: SocketAddr, path: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        services.check_alive()?;
        let last = match http_status(addr, path) {
            Ok(200) => return Ok(()),
            Ok(code) => format!("status {code}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what} (http://{addr}{path}) did not answer 200 within {READY_TIMEOUT:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

/// `(command name, ppid, utime + stime in clock ticks)` from the text of `/proc/<pid>/stat`.
/// The name is in parentheses and may contain spaces, so fields are counted after the last
/// `)`.
fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_owned();
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), numbered as in proc(5).
    Some((name, f.get(1)?.parse().ok()?, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
}

/// Every userland process: pid → (command name, CPU ticks).
type ProcessTicks = HashMap<u32, (String, u64)>;

/// CPU ticks of one process (all its threads), `None` once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, _, t)| t)
}

/// CPU ticks of every userland process (kernel threads, children of kthreadd, are left out:
/// they mostly run our own loopback traffic's softirqs).
fn all_process_ticks() -> ProcessTicks {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((name, ppid, ticks)) = parse_stat(&stat) {
            if pid != 2 && ppid != 2 {
                out.insert(pid, (name, ticks));
            }
        }
    }
    out
}

/// CPU ticks used between two snapshots by processes not in `exclude` (nor this one): the
/// total, and the busiest process's name and ticks. A process that started in between counts
/// in full; one that ended in between is missed (so this is a lower bound).
fn foreign_usage(before: &ProcessTicks, after: &ProcessTicks, exclude: &HashSet<u32>) -> (u64, Option<(String, u64)>) {
    let me = std::process::id();
    let mut total = 0;
    let mut top: Option<(String, u64)> = None;
    for (pid, (name, ticks)) in after {
        if *pid == me || exclude.contains(pid) {
            continue;
        }
        let used = ticks.saturating_sub(before.get(pid).map_or(0, |(_, t)| *t));
        total += used;
        if used > top.as_ref().map_or(0, |(_, t)| *t) {
            top = Some((name.clone(), used));
        }
    }
    (total, top)
}

/// Share of one CPU that userland processes other than this one used over `window`: a
/// quick "is the machine quiet?" check before starting.
fn foreign_cpu_now(window: Duration) -> (f64, Option<String>) {
    let before = all_process_ticks();
    std::thread::sleep(window);
    let (used, top) = foreign_usage(&before, &all_process_ticks(), &HashSet::new());
    let share = |t: u64| t as f64 / clock_ticks_per_second() / window.as_secs_f64();
    (share(used), top.map(|(name, t)| format!("{name} {:.0}%", share(t) * 100.0)))
}

fn clock_ticks_per_second() -> f64 {
    command_output("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()).unwrap_or(100.0)
}

/// The affinity list and thread count of a process, as evidence that pinning took.
fn affinity_and_threads(pid: u32) -> (String, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("?").trim().to_owned();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    (allowed, threads)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

// ---------------------------------------------------------------------------------------
// Load generators and their output

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Wrk,
    H2load,
    /// HTTP/3 in the `h3` scenario's proxied runs, HTTP/2 otherwise (h2c to the upstream).
    Oha,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::H2load => "h2load",
            Tool::Oha => "oha",
        }
    }
}

/// Builds oha with HTTP/3 into `target/tools/oha-<version>/` unless it is there (a few
/// minutes, once). Installed into a scratch directory renamed into place at the end, so an
/// interrupted build is never mistaken for a finished one.
fn install_oha() -> anyhow::Result<PathBuf> {
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
fn parse_oha(out: &str) -> anyhow::Result<LoadResult> {
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
struct LoadResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Responses received (any status).
    requests: u64,
    /// Non-2xx responses, socket errors, failed or timed-out streams.
    errors: u64,
    /// Bytes received per response, headers included (the echo grows with the headers the
    /// proxy adds).
    bytes_per_response: f64,
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
fn parse_wrk(out: &str) -> anyhow::Result<LoadResult> {
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
fn percentile(sorted: &[u64], p: f64) -> f64 {
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
fn parse_h2load(out: &str, request_log: &str) -> anyhow::Result<LoadResult> {
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

// ---------------------------------------------------------------------------------------
// Scenarios and runs

struct Scenario {
    name: &'static str,
    title: &'static str,
    tool: Tool,
    proxy_url: String,
    direct_url: String,
    /// The proxy serving `proxy_url`.
    proxy: ProxyHandle,
}

/// What a run needs to know about a proxy.
#[derive(Clone, Copy, Debug)]
struct ProxyHandle {
    pid: u32,
    metrics: SocketAddr,
}

/// One measured run of one target.
#[derive(Debug, Clone)]
struct Sample {
    load: LoadResult,
    /// CPU time the proxy spent per response, in µs (proxied runs only).
    proxy_cpu_us: Option<f64>,
    /// Share of its CPU the proxy used (1.0 = saturated; proxied runs only).
    proxy_util: Option<f64>,
    /// CPU time the upstream spent per response, in µs.
    upstream_cpu_us: f64,
    /// Share of one CPU the load generator used (sampled every 50 ms, so slightly low).
    loadgen_util: f64,
    /// Share of one CPU used by userland processes the benchmark did not start.
    foreign_util: f64,
    /// The busiest of those, as "name N%".
    foreign_top: Option<String>,
}

/// The medians of one target's samples, each figure on its own.
#[derive(Debug, Clone)]
struct Summary {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    bytes_per_response: f64,
    proxy_cpu_us: Option<f64>,
    proxy_util: Option<f64>,
    upstream_cpu_us: f64,
    loadgen_util: f64,
    foreign_util_max: f64,
}

/// The median (mean of the two middle values for an even count).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
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
    fn of(samples: &[Sample]) -> Self {
        let opt = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        Self {
            rps: median(samples.iter().map(|s| s.load.rps)),
            p50_us: median(samples.iter().map(|s| s.load.p50_us)),
            p99_us: median(samples.iter().map(|s| s.load.p99_us)),
            errors: samples.iter().map(|s| s.load.errors).sum(),
            bytes_per_response: median(samples.iter().map(|s| s.load.bytes_per_response)),
            proxy_cpu_us: opt(|s| s.proxy_cpu_us),
            proxy_util: opt(|s| s.proxy_util),
            upstream_cpu_us: median(samples.iter().map(|s| s.upstream_cpu_us)),
            loadgen_util: median(samples.iter().map(|s| s.loadgen_util)),
            foreign_util_max: samples.iter().map(|s| s.foreign_util).fold(0.0, f64::max),
        }
    }
}

struct ScenarioResult {
    name: &'static str,
    title: &'static str,
    tool: Tool,
    proxy_url: String,
    direct_url: String,
    proxy: Vec<Sample>,
    direct: Vec<Sample>,
}

/// What every run needs to know.
struct Bench<'a> {
    opts: &'a Options,
    pinning: Pinning,
    tmp: &'a TempDir,
    upstream_pid: u32,
    /// The services' pids, left out of the "foreign CPU" sum.
    ours: HashSet<u32>,
    /// oha's binary, when an oha scenario runs.
    oha: Option<PathBuf>,
}

impl Bench<'_> {
    /// Warm-up for each target, then `runs` measured runs alternating proxy and direct, so
    /// that slow drift (thermal, a neighbour's compile starting) hits both sides alike.
    fn scenario(&self, s: &Scenario) -> anyhow::Result<ScenarioResult> {
        eprintln!(
            "\n==> bench: {} ({}): {} s warm-up per target, then {} × {} s",
            s.name, s.title, self.opts.warmup, self.opts.runs, self.opts.duration
        );
        if self.opts.warmup > 0 {
            for url in [&s.proxy_url, &s.direct_url] {
                let w =
                    self.measure(s, url, None, self.opts.warmup).with_context(|| format!("warm-up against {url}"))?;
                if w.load.errors > 0 || w.load.requests == 0 {
                    bail!(
                        "warm-up against {url}: {} requests, {} errors; is the route right?",
                        w.load.requests,
                        w.load.errors
                    );
                }
            }
        }
        let (mut proxy, mut direct) = (Vec::new(), Vec::new());
        for i in 1..=self.opts.runs {
            for (target, url, handle, out) in
                [("proxy", &s.proxy_url, Some(s.proxy), &mut proxy), ("direct", &s.direct_url, None, &mut direct)]
            {
                let sample = self
                    .measure(s, url, handle, self.opts.duration)
                    .with_context(|| format!("{} run {i} against {url}", s.name))?;
                eprintln!(
                    "    run {i} {target:6}: {:>9.0} req/s  p50 {:>8}  p99 {:>8}  errors {}{}",
                    sample.load.rps,
                    fmt_latency(sample.load.p50_us),
                    fmt_latency(sample.load.p99_us),
                    sample.load.errors,
                    if sample.foreign_util > NOISY_FOREIGN_CPU {
                        format!(
                            "  (noisy: other processes used {:.0}% of a CPU; busiest {})",
                            sample.foreign_util * 100.0,
                            sample.foreign_top.as_deref().unwrap_or("?")
                        )
                    } else {
                        String::new()
                    },
                );
                out.push(sample);
            }
        }
        Ok(ScenarioResult {
            name: s.name,
            title: s.title,
            tool: s.tool,
            proxy_url: s.proxy_url.clone(),
            direct_url: s.direct_url.clone(),
            proxy,
            direct,
        })
    }

    /// One run of the scenario's load generator against `url` for `secs`, pinned next to
    /// the upstream, with the CPU time of every process read before and after.
    ///
    /// On the proxied path it also checks the proxy's own request counter against the
    /// tool's: the listeners use SO_REUSEPORT, so a stray process bound to the same port
    /// would silently take part of the load (and its answers, a redirect say, would count
    /// as successes).
    fn measure(&self, s: &Scenario, url: &str, proxy: Option<ProxyHandle>, secs: u64) -> anyhow::Result<Sample> {
        let proxy_pid = proxy.map(|p| p.pid);
        let stdout_path = self.tmp.path("loadgen.out");
        let request_log = self.tmp.path("h2load-requests.log");
        let program = match (s.tool, &self.oha) {
            (Tool::Oha, Some(oha)) => oha.clone(),
            _ => PathBuf::from(s.tool.name()),
        };
        let mut cmd = Pinning::command(self.pinning.rest, program);
        match s.tool {
            Tool::Oha => {
                // One worker thread, as wrk and h2load get; c connections × p streams.
                let version = if s.name == "h3" && url.starts_with("https://") { "3" } else { "2" };
                cmd.args(["--no-tui", "--insecure", "--worker-threads", "1", "--output-format", "json"]);
                cmd.args(["--http-version", version, "-c", &self.opts.h2_clients.to_string()]);
                cmd.args(["-p", &self.opts.h2_streams.to_string(), "-z", &format!("{secs}s"), url]);
            }
            Tool::Wrk => {
                cmd.args([
                    "-t1",
                    &format!("-c{}", self.opts.connections),
                    &format!("-d{secs}s"),
                    "--timeout",
                    "5s",
                    "--latency",
                    url,
                ]);
            }
            Tool::H2load => {
                let _ = std::fs::remove_file(&request_log);
                cmd.args([
                    "-t1",
                    &format!("-c{}", self.opts.h2_clients),
                    &format!("-m{}", self.opts.h2_streams),
                    "-D",
                    &secs.to_string(),
                ]);
                cmd.arg(format!("--log-file={}", request_log.display())).arg(url);
            }
        }
        let answered_before = proxy.map(|p| proxy_answered(p.metrics)).transpose()?;
        let before = all_process_ticks();
        let (proxy_before, upstream_before) = (proxy_pid.and_then(cpu_ticks), cpu_ticks(self.upstream_pid));
        let started = Instant::now();
        let (stdout, loadgen_ticks) = run_bounded(cmd, Duration::from_secs(secs) + LOADGEN_GRACE, &stdout_path)?;
        let wall = started.elapsed().as_secs_f64();
        let (proxy_after, upstream_after) = (proxy_pid.and_then(cpu_ticks), cpu_ticks(self.upstream_pid));
        let after = all_process_ticks();
        let answered_after = proxy.map(|p| proxy_answered(p.metrics)).transpose()?;

        let load = match s.tool {
            Tool::Wrk => parse_wrk(&stdout)?,
            Tool::Oha => parse_oha(&stdout)?,
            Tool::H2load => {
                let log = std::fs::read_to_string(&request_log).context("reading h2load's --log-file")?;
                parse_h2load(&stdout, &log)?
            }
        };
        if let (Some(b), Some(a)) = (answered_before, answered_after) {
            let answered = a.saturating_sub(b);
            // Requests cut off at the end of the run can be counted by the proxy and not by
            // the tool, never the other way round (beyond rounding).
            if (answered as f64) < load.requests as f64 * 0.99 {
                bail!(
                    "the proxy counted {answered} requests but {} got {} responses: is another process listening on {url} too (SO_REUSEPORT)?",
                    s.tool.name(),
                    load.requests
                );
            }
        }
        let hz = clock_ticks_per_second();
        let responses = load.requests.max(1) as f64;
        let secs_of = |ticks: u64| ticks as f64 / hz;
        let proxy_ticks = match (proxy_before, proxy_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let upstream_ticks = upstream_after.unwrap_or(0).saturating_sub(upstream_before.unwrap_or(0));
        let (foreign, foreign_top) = foreign_usage(&before, &after, &self.ours);
        Ok(Sample {
            proxy_cpu_us: proxy_ticks.map(|t| secs_of(t) * 1e6 / responses),
            proxy_util: proxy_ticks.map(|t| secs_of(t) / wall),
            upstream_cpu_us: secs_of(upstream_ticks) * 1e6 / responses,
            loadgen_util: secs_of(loadgen_ticks) / wall,
            foreign_util: secs_of(foreign) / wall,
            foreign_top: foreign_top.map(|(name, t)| format!("{name} {:.0}%", secs_of(t) / wall * 100.0)),
            load,
        })
    }
}

/// Runs a load generator with a hard deadline (a hung tool is killed, never waited on
/// forever), sampling its CPU time every 50 ms while it runs. Returns its stdout and the
/// last CPU sample.
fn run_bounded(mut cmd: Command, limit: Duration, stdout_path: &Path) -> anyhow::Result<(String, u64)> {
    let stderr_path = stdout_path.with_extension("err");
    cmd.stdin(Stdio::null()).stdout(File::create(stdout_path)?).stderr(File::create(&stderr_path)?);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    let mut ticks = 0;
    let status = loop {
        if let Some(t) = cpu_ticks(child.id()) {
            ticks = t;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} ran past its {limit:?} limit and was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(stdout_path).unwrap_or_default();
    if !status.success() {
        bail!("{cmd:?} failed ({status}):\n{stdout}\n{}", tail(&stderr_path, 20));
    }
    Ok((stdout, ticks))
}

// ---------------------------------------------------------------------------------------
// The report

/// The machine the numbers come from.
struct Machine {
    nproc: String,
    cpu_model: String,
    kernel: String,
    rustc: String,
    wrk: String,
    h2load: String,
    git: String,
}

impl Machine {
    fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map_or("?", |v| v.trim_start_matches([' ', '\t', ':']))
            .to_owned();
        let git = command_output("git", &["-C", &util::root().display().to_string(), "rev-parse", "--short", "HEAD"])
            .unwrap_or_else(|| "?".to_owned());
        let dirty =
            command_output("git", &["-C", &util::root().display().to_string(), "status", "--porcelain"]).is_some();
        let first_line =
            |s: Option<String>| s.and_then(|s| s.lines().next().map(str::to_owned)).unwrap_or_else(|| "?".to_owned());
        Self {
            nproc: command_output("nproc", &[]).unwrap_or_else(|| "?".to_owned()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned()),
            rustc: command_output("rustc", &["-V"]).unwrap_or_else(|| "?".to_owned()),
            // wrk prints its version in the usage text and exits non-zero.
            wrk: first_line(command_output("wrk", &["-v"])).split(" [").next().unwrap_or("?").to_owned(),
            h2load: first_line(command_output("h2load", &["--version"])),
            git: if dirty { format!("{git} (uncommitted changes)") } else { git },
        }
    }
}

struct Report<'a> {
    opts: &'a Options,
    machine: Machine,
    pinning: Pinning,
    processes: Vec<Value>,
    load_before: f64,
    load_after: f64,
    results: Vec<ScenarioResult>,
}

fn fmt_latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Thousands separators for req/s.
fn fmt_rps(v: f64) -> String {
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

fn ratio(proxy: f64, direct: f64) -> f64 {
    proxy / direct
}

fn timestamp() -> String {
    command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "?".to_owned())
}

impl Report<'_> {
    fn load_text(&self) -> String {
        let o = self.opts;
        format!(
            "wrk 1 thread, {} connections; h2load and oha {OHA_VERSION} (h3, h2-oha) 1 thread, {} connections × {} concurrent streams; GET {} on the demo upstream (a small JSON echo for /); proxy to upstream over {}",
            o.connections, o.h2_clients, o.h2_streams, o.path, if o.upstream_scheme == "h2c" { "h2c (HTTP/2 prior knowledge)" } else { "HTTP/1.1" }
        )
    }

    fn noisy(&self) -> bool {
        self.results.iter().flat_map(|r| r.proxy.iter().chain(&r.direct)).any(|s| s.foreign_util > NOISY_FOREIGN_CPU)
    }

    fn markdown(&self) -> String {
        let (m, o) = (&self.machine, self.opts);
        let mut md = String::new();
        let _ = writeln!(md, "# Portcullis benchmark, {}\n", timestamp());
        let _ = writeln!(md, "- machine: {} CPUs ({}), kernel {}, {}", m.nproc, m.cpu_model, m.kernel, m.rustc);
        let _ = writeln!(md, "- code: git {}, release build", m.git);
        let _ = writeln!(md, "- {}", self.pinning.describe());
        let _ = writeln!(md, "- load: {}; {} and {}", self.load_text(), m.wrk, m.h2load);
        let _ = writeln!(
            md,
            "- runs: {} s warm-up per target, then {} × {} s per target, proxy and direct interleaved; every figure is the median of the runs, ratios are proxy / direct",
            o.warmup, o.runs, o.duration
        );
        let _ = writeln!(md, "- percentiles: wrk's own HdrHistogram (`--latency`); h2load: nearest rank over every 2xx request in its `--log-file`; oha: its own (`--output-format json`)");
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

        let _ = writeln!(md, "| scenario | target | req/s | p50 | p99 | errors |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
        for r in &self.results {
            let (p, d) = (Summary::of(&r.proxy), Summary::of(&r.direct));
            let _ = writeln!(
                md,
                "| **{}**: {} ({}) | proxy | {} | {} | {} | {} |",
                r.name,
                r.title,
                r.tool.name(),
                fmt_rps(p.rps),
                fmt_latency(p.p50_us),
                fmt_latency(p.p99_us),
                p.errors
            );
            let _ = writeln!(
                md,
                "| | direct | {} | {} | {} | {} |",
                fmt_rps(d.rps),
                fmt_latency(d.p50_us),
                fmt_latency(d.p99_us),
                d.errors
            );
            let _ = writeln!(
                md,
                "| | *proxy/direct* | *{:.2}* | *{:.2}* | *{:.2}* | |",
                ratio(p.rps, d.rps),
                ratio(p.p50_us, d.p50_us),
                ratio(p.p99_us, d.p99_us)
            );
        }

        let _ = writeln!(md, "\nWhere the time goes (medians; CPU from /proc/<pid>/stat around each run):\n");
        let _ = writeln!(md, "| scenario | proxy CPU per request | proxy CPU busy | upstream CPU per request, proxied / direct | load generator CPU busy, proxied / direct | bytes per response, proxied / direct | other processes, worst run |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.results {
            let (p, d) = (Summary::of(&r.proxy), Summary::of(&r.direct));
            let _ = writeln!(
                md,
                "| {} | {:.1} µs | {:.0}% | {:.1} / {:.1} µs | {:.0}% / {:.0}% | {:.0} / {:.0} | {:.0}% of a CPU |",
                r.name,
                p.proxy_cpu_us.unwrap_or(f64::NAN),
                p.proxy_util.unwrap_or(f64::NAN) * 100.0,
                p.upstream_cpu_us,
                d.upstream_cpu_us,
                p.loadgen_util * 100.0,
                d.loadgen_util * 100.0,
                p.bytes_per_response,
                d.bytes_per_response,
                p.foreign_util_max.max(d.foreign_util_max) * 100.0
            );
        }
        if self.noisy() {
            let mut busiest: Vec<&str> = self
                .results
                .iter()
                .flat_map(|r| r.proxy.iter().chain(&r.direct))
                .filter(|s| s.foreign_util > NOISY_FOREIGN_CPU)
                .filter_map(|s| s.foreign_top.as_deref()?.rsplit_once(' ').map(|(name, _)| name))
                .collect();
            busiest.sort_unstable();
            busiest.dedup();
            let _ = writeln!(
                md,
                "\n**Noisy:** processes not started by the benchmark (busiest: {}) used more than {:.0}% of a CPU during some runs (see the last column); re-run on a quiet machine.",
                busiest.join(", "),
                NOISY_FOREIGN_CPU * 100.0
            );
        }
        md
    }

    fn json(&self) -> Value {
        let m = &self.machine;
        let sample = |s: &Sample| {
            json!({
                "rps": s.load.rps, "p50_us": s.load.p50_us, "p99_us": s.load.p99_us,
                "requests": s.load.requests, "errors": s.load.errors,
                "bytes_per_response": s.load.bytes_per_response,
                "proxy_cpu_us_per_request": s.proxy_cpu_us, "proxy_cpu_busy": s.proxy_util,
                "upstream_cpu_us_per_request": s.upstream_cpu_us,
                "loadgen_cpu_busy": s.loadgen_util, "foreign_cpu": s.foreign_util, "foreign_busiest": s.foreign_top,
            })
        };
        let summary = |s: &Summary| {
            json!({
                "rps": s.rps, "p50_us": s.p50_us, "p99_us": s.p99_us, "errors": s.errors,
                "bytes_per_response": s.bytes_per_response,
                "proxy_cpu_us_per_request": s.proxy_cpu_us, "proxy_cpu_busy": s.proxy_util,
                "upstream_cpu_us_per_request": s.upstream_cpu_us, "loadgen_cpu_busy": s.loadgen_util,
                "foreign_cpu_max": s.foreign_util_max,
            })
        };
        let scenarios: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let (p, d) = (Summary::of(&r.proxy), Summary::of(&r.direct));
                json!({
                    "name": r.name, "title": r.title, "tool": r.tool.name(),
                    "proxy": { "url": r.proxy_url, "median": summary(&p), "runs": r.proxy.iter().map(sample).collect::<Vec<_>>() },
                    "direct": { "url": r.direct_url, "median": summary(&d), "runs": r.direct.iter().map(sample).collect::<Vec<_>>() },
                    "ratio_proxy_over_direct": {
                        "rps": ratio(p.rps, d.rps), "p50": ratio(p.p50_us, d.p50_us), "p99": ratio(p.p99_us, d.p99_us),
                    },
                })
            })
            .collect();
        json!({
            "generated_at": timestamp(),
            "machine": {
                "nproc": m.nproc, "cpu_model": m.cpu_model, "kernel": m.kernel, "rustc": m.rustc,
                "wrk": m.wrk, "h2load": m.h2load, "git": m.git,
                "load_average_1m_before": self.load_before, "load_average_1m_after": self.load_after,
                "noisy": self.noisy(),
            },
            "settings": {
                "duration_s": self.opts.duration, "runs": self.opts.runs, "warmup_s": self.opts.warmup,
                "wrk_connections": self.opts.connections, "h2load_clients": self.opts.h2_clients,
                "h2load_streams": self.opts.h2_streams, "path": self.opts.path,
                "upstream_scheme": self.opts.upstream_scheme,
                "load": self.load_text(),
                "pinning": self.pinning.describe(),
                "percentiles": "wrk: its HdrHistogram (--latency); h2load: nearest rank over 2xx requests in --log-file",
                "aggregate": "median of the runs for each figure; ratio = proxy median / direct median",
            },
            "processes": self.processes,
            "scenarios": scenarios,
        })
    }
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
    fn nearest_rank_and_median() {
        let v: Vec<u64> = (1..=100).collect();
        assert!((percentile(&v, 50.0) - 50.0).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile(&[7], 99.0) - 7.0).abs() < 1e-9);
        assert!((median([3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median([4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn stat_with_spaces_in_the_name() {
        let stat = "1234 (tokio runtime) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat), Some(("tokio runtime".to_owned(), 77, 300)));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_rps(1_234_567.4), "1,234,567");
        assert_eq!(fmt_rps(999.0), "999");
        assert_eq!(fmt_latency(850.0), "850 µs");
        assert_eq!(fmt_latency(10460.0), "10.46 ms");
    }
}
