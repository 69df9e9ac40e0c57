//! `cargo xtask bench`: Portcullis and its peers (nginx, HAProxy, Traefik, Caddy, Pingora) in
//! front of the same upstream, and the upstream on its own, side by side in one run.
//!
//! One invocation installs or builds the peers and the load generators, builds the release
//! binaries, starts the demo upstream, two Portcullis processes (plain and TLS) and every peer
//! (configured alike, see `peers.rs`; built by `build.rs`), pins them to CPUs with `taskset`,
//! and runs every
//! scenario against every target, interleaved run by run, so each ratio compares numbers
//! taken seconds apart on the same machine state. What is measured and why it is set up this
//! way is in bench/README.md; keep the two in step.

mod build;
mod loadgen;
mod peers;
mod policy;
mod procs;
mod report;
mod signin;
mod tunnel;

/// The OpenID Provider's node modules, installed when missing (also for `cargo xtask e2e`).
pub(crate) use signin::install_provider;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::util;
use loadgen::{LoadResult, Tool};
use peers::ProxyPorts;
use procs::{Pinning, Services, TempDir};

const USAGE: &str = "usage: cargo xtask bench [options]   (cargo xtask bench controller: the controller at scale)
  --duration SECS      length of each measured run (default 10)
  --runs N             measured runs per target; the median is reported (default 3)
  --warmup SECS        warm-up run per target before measuring (default 2)
  --connections N      wrk connections, HTTP/1.1 scenario (default 64)
  --h2-clients N       h2load and oha connections (default 16)
  --h2-streams N       h2load and oha concurrent streams per connection (default 8)
  --idle N             connections held open in the idle scenarios (default 10000)
  --path PATH          request path on the demo upstream (default /status/200)
  --upstream-scheme S  how the proxies reach the upstream: http (HTTP/1.1, default) or h2c
  --peers NAME[,NAME]  the peers to run beside Portcullis (default all: nginx, haproxy,
                       traefik, caddy, pingora; `none` for none). Traefik and Caddy are
                       built from Go modules on first use (minutes), Pingora with cargo
  --only NAME[,NAME]   run only these scenarios (h1, h2-tls, tls-handshake, stream-1mib,
                       websocket, idle-h1, idle-tls, h3, h2-oha, policy, signin,
                       routes-10k, tunnel)
  --out DIR            where latest.md, latest.json and latest.png go (default bench/results)";

/// The Debian packages the harness drives, and the binary each puts on `PATH`.
const TOOLS: &[(&str, &str)] = &[("wrk", "wrk"), ("h2load", "nghttp2-client"), ("taskset", "util-linux")];

/// How long a load generator may overrun its own duration before it is killed: every load
/// loop is bounded in time even if a tool hangs on a stuck connection.
const LOADGEN_GRACE: Duration = Duration::from_secs(30);

/// How long the upstream and the proxies get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A userland process not started by the benchmark that used more than this share of one
/// core during a run makes the run "noisy" (another engineer's compile, say).
const NOISY_FOREIGN_CPU: f64 = 0.05;

/// Connections of the WebSocket, handshake and 1 MiB scenarios.
const WS_CONNECTIONS: u32 = 16;
const HANDSHAKE_CONNECTIONS: u32 = 16;
const STREAM_CONNECTIONS: u32 = 8;
/// Bytes of the streamed response.
const STREAM_BYTES: u64 = 1 << 20;

/// Scenario names, in the order they run.
const SCENARIOS: &[&str] = &[
    "h1",
    "h2-tls",
    "tls-handshake",
    "stream-1mib",
    "websocket",
    "idle-h1",
    "idle-tls",
    "h3",
    "h2-oha",
    "policy",
    "signin",
    "routes-10k",
    "tunnel",
];

/// The scenarios that run against the peers (and need nginx, HAProxy and the shared
/// upstream started); `policy`, `signin` and `routes-10k` start their own processes.
const PEER_SCENARIOS: &[&str] =
    &["h1", "h2-tls", "tls-handshake", "stream-1mib", "websocket", "idle-h1", "idle-tls", "h3", "h2-oha"];

/// The scenarios whose load generator is `portcullis-loadgen` (built only when one runs).
const LOADGEN_SCENARIOS: &[&str] = &["tls-handshake", "websocket", "idle-h1", "idle-tls", "tunnel"];

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    duration: u64,
    runs: usize,
    warmup: u64,
    connections: u32,
    h2_clients: u32,
    h2_streams: u32,
    idle: u32,
    path: String,
    upstream_scheme: String,
    only: Option<Vec<String>>,
    /// The peers started beside Portcullis, in column order.
    peers: Vec<Target>,
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
            idle: 10_000,
            path: "/status/200".to_owned(),
            upstream_scheme: "http".to_owned(),
            only: None,
            peers: Target::PEERS.to_vec(),
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
                "--idle" => o.idle = num(key, &v)?,
                "--path" => o.path = v,
                "--upstream-scheme" if v == "http" || v == "h2c" => o.upstream_scheme = v,
                "--upstream-scheme" => bail!("--upstream-scheme must be http or h2c"),
                "--only" => o.only = Some(v.split(',').map(str::to_owned).collect()),
                "--peers" => o.peers = parse_peers(&v)?,
                "--out" => o.out = PathBuf::from(v),
                _ => bail!("unknown option {key}\n{USAGE}"),
            }
        }
        if o.duration == 0 || o.runs == 0 {
            bail!("--duration and --runs must be at least 1");
        }
        if o.connections == 0 || o.h2_clients == 0 || o.h2_streams == 0 || o.idle == 0 {
            bail!("--connections, --h2-clients, --h2-streams and --idle must be at least 1");
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

/// `--peers`: comma-separated keys, each once, kept in the table's column order.
fn parse_peers(list: &str) -> anyhow::Result<Vec<Target>> {
    if list == "none" {
        return Ok(Vec::new());
    }
    let mut wanted = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(&t) = Target::PEERS.iter().find(|t| t.key() == name) else {
            let known: Vec<&str> = Target::PEERS.iter().map(|t| t.key()).collect();
            bail!("--peers: unknown peer {name:?} (known: {}, or none)", known.join(", "));
        };
        wanted.push(t);
    }
    Ok(Target::PEERS.iter().copied().filter(|t| wanted.contains(t)).collect())
}

/// Who answers: Portcullis, one of its peers, or the upstream itself (the limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Portcullis,
    Nginx,
    Haproxy,
    Traefik,
    Caddy,
    Pingora,
    Direct,
}

impl Target {
    /// The peers, in the order of the report's columns.
    pub const PEERS: [Target; 5] = [Target::Nginx, Target::Haproxy, Target::Traefik, Target::Caddy, Target::Pingora];

    /// Every target in column order: Portcullis, the peers, direct.
    pub const ALL: [Target; 7] = [
        Target::Portcullis,
        Target::Nginx,
        Target::Haproxy,
        Target::Traefik,
        Target::Caddy,
        Target::Pingora,
        Target::Direct,
    ];

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Target::Portcullis => "portcullis",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::Traefik => "traefik",
            Target::Caddy => "caddy",
            Target::Pingora => "pingora",
            Target::Direct => "direct",
        }
    }

    /// The column heading.
    pub fn label(self) -> &'static str {
        match self {
            Target::Portcullis => "Portcullis",
            Target::Nginx => "nginx",
            Target::Haproxy => "HAProxy",
            Target::Traefik => "Traefik",
            Target::Caddy => "Caddy",
            Target::Pingora => "Pingora",
            Target::Direct => "direct",
        }
    }
}

/// What a scenario's main figure counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Requests,
    MiB,
    Connections,
    Messages,
    KiBPerConnection,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Requests => "req/s",
            Unit::MiB => "MiB/s",
            Unit::Connections => "new conn/s",
            Unit::Messages => "msg/s",
            Unit::KiBPerConnection => "KiB per idle connection",
        }
    }

    /// Memory is the one figure where less is better.
    pub fn higher_is_better(self) -> bool {
        self != Unit::KiBPerConnection
    }
}

/// One target of one scenario: where the tool is pointed and which process serves it.
#[derive(Clone, Debug)]
struct Endpoint {
    target: Target,
    /// The name in progress lines and errors: the target's, or which route of one target
    /// (`policy` runs several endpoints of one Portcullis process).
    label: &'static str,
    addr: SocketAddr,
    tls: bool,
    path: String,
    /// Extra request headers (`Name: value`), sent by wrk (`-H`).
    headers: Vec<String>,
    /// The proxy (the root of its process tree), or the upstream for `Direct`.
    pid: u32,
    /// Portcullis's metrics listener, to cross-check the tool's request count.
    metrics: Option<SocketAddr>,
}

impl Endpoint {
    fn url(&self) -> String {
        format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.addr, self.path)
    }
}

struct Scenario {
    name: &'static str,
    title: &'static str,
    tool: Tool,
    unit: Unit,
    endpoints: Vec<Endpoint>,
}

/// One measured run of one target.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The scenario's main figure, in its unit.
    pub figure: f64,
    pub load: LoadResult,
    /// CPU time the proxy spent per response (message, connection), in µs (proxied runs).
    pub proxy_cpu_us: Option<f64>,
    /// Share of its CPU the proxy used (1.0 = saturated; proxied runs).
    pub proxy_util: Option<f64>,
    /// CPU time the upstream spent per response, in µs.
    pub upstream_cpu_us: f64,
    /// Share of one CPU the load generator used (sampled every 50 ms, so slightly low).
    pub loadgen_util: f64,
    /// Share of one CPU used by userland processes the benchmark did not start.
    pub foreign_util: f64,
    /// The busiest of those, as "name N%".
    pub foreign_top: Option<String>,
}

/// Every run of one target in one scenario.
pub struct TargetRuns {
    pub target: Target,
    pub url: String,
    pub samples: Vec<Sample>,
}

pub struct ScenarioResult {
    pub name: &'static str,
    pub title: &'static str,
    pub tool: Tool,
    pub unit: Unit,
    pub targets: Vec<TargetRuns>,
}

/// Entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(opts) = Options::parse(args)? else { return Ok(()) };
    let peers_wanted = PEER_SCENARIOS.iter().any(|s| opts.wants(s));
    // Only what the chosen scenarios use is installed and built: `--only policy` needs
    // neither nginx nor HAProxy, nor the load generator, nor matplotlib.
    procs::ensure_tools(TOOLS)?;
    if peers_wanted {
        let debian: Vec<(&str, &str)> = peers::PEER_TOOLS
            .iter()
            .copied()
            .filter(|(bin, _)| match *bin {
                "nginx" => opts.peers.contains(&Target::Nginx),
                "haproxy" => opts.peers.contains(&Target::Haproxy),
                _ => true,
            })
            .collect();
        procs::ensure_tools(&debian)?;
    }
    if opts.wants("policy") {
        procs::ensure_tools(policy::TOOLS)?;
    }
    if opts.wants("tunnel") {
        procs::ensure_tools(tunnel::TOOLS)?;
    }
    let oha = if opts.wants("h3") || opts.wants("h2-oha") { Some(loadgen::install_oha()?) } else { None };
    // Taken before the build, which would otherwise dominate it.
    let load_before = procs::load_average();
    let binary = util::release_binary()?;
    let loadgen_bin = util::target_dir().join("release/portcullis-loadgen");
    if LOADGEN_SCENARIOS.iter().any(|s| opts.wants(s)) {
        util::step(
            "build the load generator (release)",
            &["cargo", "build", "--release", "--package", "portcullis-loadgen"],
        )?;
    }
    // The peers without a Debian package, built (or found cached) before anything starts, so
    // a build never overlaps a measurement.
    let mut built = std::collections::HashMap::new();
    if peers_wanted {
        for &peer in &opts.peers {
            let b = match peer {
                Target::Traefik => build::traefik()?,
                Target::Caddy => build::caddy()?,
                Target::Pingora => build::pingora()?,
                _ => continue,
            };
            built.insert(peer, b);
        }
    }
    let python = if peers_wanted { Some(report::install_matplotlib()?) } else { None };
    let machine = report::Machine::describe();
    let (busy, top) = procs::foreign_cpu_now(Duration::from_secs(1));
    if busy > NOISY_FOREIGN_CPU {
        eprintln!(
            "\nbench: warning: other processes are using {:.0}% of a CPU right now (busiest: {}); the numbers will be noisy",
            busy * 100.0,
            top.unwrap_or_default()
        );
    }

    // Declared before the services of each part so that it is dropped after them: the
    // children's logs live in it.
    let tmp = TempDir::new()?;
    let pinning = Pinning::detect();
    eprintln!("\n==> bench: {}", pinning.describe());
    let (results, mut processes) = if peers_wanted {
        peer_scenarios(&opts, &binary, &loadgen_bin, oha, &built, pinning, &tmp)?
    } else {
        (Vec::new(), Vec::new())
    };
    let policy = if opts.wants("policy") {
        let (cost, procs) = policy::run(&opts, &binary, pinning, &tmp)?;
        processes.extend(procs);
        Some(cost)
    } else {
        None
    };
    let signin = if opts.wants("signin") {
        let (cost, procs) = signin::run(&opts, &binary, pinning, &tmp)?;
        processes.extend(procs);
        Some(cost)
    } else {
        None
    };
    let routes = if opts.wants("routes-10k") { Some(routes_scale(&binary, pinning, &tmp, opts.runs)?) } else { None };
    let tunnels = if opts.wants("tunnel") {
        let (bench, procs) = tunnel::run(&opts, &binary, &loadgen_bin, pinning, &tmp)?;
        processes.extend(procs);
        Some(bench)
    } else {
        None
    };

    let report = report::Report {
        load_text: load_text(&opts),
        runs: opts.runs,
        warmup: opts.warmup,
        duration: opts.duration,
        idle: opts.idle,
        machine,
        pinning,
        processes,
        load_before,
        load_after: procs::load_average(),
        results,
        peers: if peers_wanted { opts.peers.clone() } else { Vec::new() },
        builds: opts.peers.iter().filter_map(|t| built.get(t).map(|b| (*t, b.version.clone(), b.build_secs))).collect(),
        policy,
        signin,
        routes,
    };
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let (md_path, json_path, png_path) =
        (opts.out.join("latest.md"), opts.out.join("latest.json"), opts.out.join("latest.png"));
    let mut json = report.json();
    if let Some(t) = &tunnels {
        json["tunnel"] = t.json();
    }
    let json = serde_json::to_string_pretty(&json)?;
    std::fs::write(&json_path, json + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    // The chart draws the peer comparison; without it there is nothing to draw.
    if let Some(python) = &python {
        report::chart(python, &json_path, &png_path)?;
    }
    let mut markdown = report.markdown();
    if let Some(t) = &tunnels {
        markdown.push_str(&t.markdown());
    }
    std::fs::write(&md_path, &markdown).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{markdown}");
    let png = if python.is_some() { format!(" and {}", png_path.display()) } else { String::new() };
    eprintln!("bench: wrote {}, {}{png}", md_path.display(), json_path.display());
    Ok(())
}

/// The scenarios against the peers: the demo upstream, Portcullis (plain, TLS and, for the
/// oha scenarios, HTTP/3) and the chosen peers started, every wanted scenario run against
/// them, and the processes described (allowed CPUs, threads) for the report.
fn peer_scenarios(
    opts: &Options,
    binary: &std::path::Path,
    loadgen_bin: &std::path::Path,
    oha: Option<PathBuf>,
    built: &std::collections::HashMap<Target, build::Built>,
    pinning: Pinning,
    tmp: &TempDir,
) -> anyhow::Result<(Vec<ScenarioResult>, Vec<Value>)> {
    let mut services = Services::default();
    let cert = peers::certificate(&tmp.0)?;

    // The upstream, three Portcullis processes of four ports each, and two listeners per peer.
    let ports = procs::distinct_ports(13 + 2 * opts.peers.len())?;
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let upstream = loopback(ports[0]);
    let plain = ProxyPorts::from_slice(&ports[1..5]);
    let tls = ProxyPorts::from_slice(&ports[5..9]);
    // `codec_type: http3`: the same TLS listener plus quic-ingress on its port over UDP.
    let quic = ProxyPorts::from_slice(&ports[9..13]);

    let mut upstream_cmd = Pinning::command(pinning.rest, binary);
    upstream_cmd.args(["--log-level", "warn", "demo-upstream", "--listen", &upstream.to_string(), "--name", "bench"]);
    let upstream_pid = services.spawn("upstream", upstream_cmd, tmp.path("upstream.log"))?;
    procs::wait_for_200(&mut services, upstream, &opts.path, "the demo upstream")?;

    // Portcullis: one process per listener kind, as the config has one `address`.
    let mut ours = std::collections::HashMap::new();
    let mut wanted = vec![("plain", &plain, None), ("tls", &tls, Some(&cert))];
    if oha.is_some() {
        wanted.push(("h3", &quic, Some(&cert)));
    }
    for (label, ports, cert) in wanted {
        let config = tmp.path(&format!("portcullis-{label}.yaml"));
        let mut yaml = peers::portcullis_yaml(ports, &opts.upstream_scheme, upstream, cert);
        if label == "h3" {
            yaml.push_str("codec_type: http3\n");
        }
        std::fs::write(&config, yaml).context("writing the Portcullis config")?;
        let mut cmd = Pinning::command(pinning.proxy, binary);
        // A long watch interval: the config never changes, and polling it would only add noise.
        cmd.args(["--log-level", "warn", "serve", "--watch-interval", "1h", "--config"]).arg(&config);
        let pid =
            services.spawn(&format!("portcullis ({label})"), cmd, tmp.path(&format!("portcullis-{label}.log")))?;
        procs::wait_for_200(&mut services, ports.admin(), "/readyz", &format!("Portcullis ({label})'s /readyz"))?;
        ours.insert(label, (pid, ports.main(), ports.metrics()));
    }
    // wrk counts 3xx as success, so make sure the plain listener really routes (a listener
    // that redirected to https would otherwise "succeed" very fast).
    procs::wait_for_200(&mut services, plain.main(), &opts.path, "a request through Portcullis (plain)")?;

    // Each peer, with its plain and TLS listener; one at a time, each answering before the next.
    let mut running = Vec::new();
    for (i, &peer) in opts.peers.iter().enumerate() {
        let (plain_port, tls_port) = (ports[13 + 2 * i], ports[14 + 2 * i]);
        let listen = PeerListeners { plain: plain_port, tls: tls_port, upstream };
        let pid = start_peer(&mut services, peer, listen, &cert, built, pinning, tmp)?;
        let what = format!("a request through {}", peer.label());
        procs::wait_for_200(&mut services, loopback(plain_port), &opts.path, &what)?;
        running.push((peer, plain_port, tls_port, pid));
    }

    let processes = describe_processes(&services);

    let ep = |target: Target, addr, tls, path: &str, pid, metrics| Endpoint {
        target,
        label: target.label(),
        addr,
        tls,
        path: path.to_owned(),
        headers: Vec::new(),
        pid,
        metrics,
    };
    // The targets of a scenario: Portcullis's process of that kind, every peer, and the
    // upstream (plain; never over TLS, since it speaks none).
    let all = |tls: bool, path: &str, with_direct: bool| {
        let (pid, addr, metrics) = ours[if tls { "tls" } else { "plain" }];
        let mut v = vec![ep(Target::Portcullis, addr, tls, path, pid, Some(metrics))];
        for &(peer, plain_port, tls_port, pid) in &running {
            v.push(ep(peer, loopback(if tls { tls_port } else { plain_port }), tls, path, pid, None));
        }
        if with_direct {
            v.push(ep(Target::Direct, upstream, false, path, upstream_pid, None));
        }
        v
    };
    let stream_path = format!("/bytes?n={STREAM_BYTES}");
    let mut scenarios = vec![
        Scenario {
            name: "h1",
            title: "HTTP/1.1 keep-alive, small response",
            tool: Tool::Wrk,
            unit: Unit::Requests,
            endpoints: all(false, &opts.path, true),
        },
        Scenario {
            name: "h2-tls",
            title: "HTTPS, HTTP/2 multiplexed (direct: h2c)",
            tool: Tool::H2load,
            unit: Unit::Requests,
            endpoints: all(true, &opts.path, true),
        },
        Scenario {
            name: "tls-handshake",
            title: "a new TLS connection per request, no resumption (direct: a new TCP connection)",
            tool: Tool::Handshake,
            unit: Unit::Connections,
            endpoints: all(true, &opts.path, true),
        },
        Scenario {
            name: "stream-1mib",
            title: "1 MiB response streamed, HTTP/1.1 keep-alive",
            tool: Tool::Wrk,
            unit: Unit::MiB,
            endpoints: all(false, &stream_path, true),
        },
        Scenario {
            name: "websocket",
            title: "WebSocket echo, 64-byte messages",
            tool: Tool::WsEcho,
            unit: Unit::Messages,
            endpoints: all(false, "/ws", true),
        },
        Scenario {
            name: "idle-h1",
            title: "idle HTTP/1.1 keep-alive connections held open",
            tool: Tool::Hold,
            unit: Unit::KiBPerConnection,
            endpoints: all(false, &opts.path, true),
        },
        Scenario {
            name: "idle-tls",
            title: "idle TLS (HTTP/1.1) connections held open",
            tool: Tool::Hold,
            unit: Unit::KiBPerConnection,
            endpoints: all(true, &opts.path, false),
        },
    ];
    // HTTP/3 has no peer here and no direct path (the upstream speaks HTTP/1.1 and h2c), so
    // both oha scenarios compare with h2c to the upstream from the same client; h3 beside
    // h2-oha is HTTP/3 beside HTTP/2 through the same process, client and run.
    if oha.is_some() {
        let (pid, addr, metrics) = ours["h3"];
        for (name, title) in [
            ("h3", "HTTP/3 multiplexed (QUIC); no peer speaks it; direct: h2c"),
            ("h2-oha", "HTTP/2 multiplexed over TLS, the h3 scenario's client and process; direct: h2c"),
        ] {
            scenarios.push(Scenario {
                name,
                title,
                tool: Tool::Oha,
                unit: Unit::Requests,
                endpoints: vec![
                    ep(Target::Portcullis, addr, true, &opts.path, pid, Some(metrics)),
                    ep(Target::Direct, upstream, false, &opts.path, upstream_pid, None),
                ],
            });
        }
    }

    let bench =
        Bench { opts, pinning, tmp, upstream_pid, ours: services.pids(), oha, loadgen: loadgen_bin.to_path_buf() };
    let mut results = Vec::new();
    for s in scenarios.iter().filter(|s| opts.wants(s.name)) {
        services.check_alive()?;
        results.push(if s.tool == Tool::Hold { bench.idle(s)? } else { bench.scenario(s)? });
    }
    services.check_alive()?;
    Ok((results, processes))
}

/// Where a peer listens and what it proxies to.
#[derive(Clone, Copy)]
struct PeerListeners {
    plain: u16,
    tls: u16,
    upstream: SocketAddr,
}

/// Writes `peer`'s config into the scratch directory and starts it on the proxy CPU; returns
/// its pid. The Go peers get `GOMAXPROCS=1`, as nginx gets one worker and HAProxy one thread
/// (Go would size itself to the affinity mask anyway; this says it).
fn start_peer(
    services: &mut Services,
    peer: Target,
    at: PeerListeners,
    cert: &peers::Certificate,
    built: &std::collections::HashMap<Target, build::Built>,
    pinning: Pinning,
    tmp: &TempDir,
) -> anyhow::Result<u32> {
    let PeerListeners { plain, tls, upstream } = at;
    let binary =
        |t: Target| built.get(&t).map(|b| b.binary.clone()).with_context(|| format!("{} was not built", t.label()));
    let cmd = match peer {
        Target::Nginx => {
            let conf = tmp.path("nginx.conf");
            std::fs::write(&conf, peers::nginx_conf(&tmp.0, plain, tls, upstream, cert))?;
            let mut cmd = Pinning::command(pinning.proxy, "nginx");
            cmd.arg("-e").arg(tmp.path("nginx-error.log")).arg("-c").arg(&conf);
            cmd
        }
        Target::Haproxy => {
            let cfg = tmp.path("haproxy.cfg");
            std::fs::write(&cfg, peers::haproxy_cfg(plain, tls, upstream, cert))?;
            let mut cmd = Pinning::command(pinning.proxy, "haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            cmd
        }
        Target::Traefik => {
            let (static_path, dynamic_path) = (tmp.path("traefik.yml"), tmp.path("traefik-dynamic.yml"));
            let (st, dy) = peers::traefik_yaml(plain, tls, upstream, cert, &dynamic_path);
            std::fs::write(&static_path, st)?;
            std::fs::write(&dynamic_path, dy)?;
            let mut cmd = Pinning::command(pinning.proxy, binary(peer)?);
            cmd.arg(format!("--configFile={}", static_path.display())).env("GOMAXPROCS", "1");
            cmd
        }
        Target::Caddy => {
            let config = tmp.path("caddy.json");
            std::fs::write(&config, peers::caddy_json(&tmp.0, plain, tls, upstream, cert))?;
            let mut cmd = Pinning::command(pinning.proxy, binary(peer)?);
            cmd.arg("run").arg("--config").arg(&config).env("GOMAXPROCS", "1");
            // Caddy keeps state (an autosaved config, locks) under these; not in the home directory.
            cmd.env("XDG_DATA_HOME", tmp.path("caddy-data")).env("XDG_CONFIG_HOME", tmp.path("caddy-config"));
            cmd
        }
        Target::Pingora => {
            let conf = tmp.path("pingora.yaml");
            std::fs::write(&conf, peers::pingora_yaml(&tmp.0))?;
            let mut cmd = Pinning::command(pinning.proxy, binary(peer)?);
            cmd.arg("--conf").arg(&conf).args(["--upstream", &upstream.to_string()]);
            cmd.args(["--plain", &format!("127.0.0.1:{plain}"), "--tls", &format!("127.0.0.1:{tls}")]);
            cmd.arg("--cert").arg(&cert.cert).arg("--key").arg(&cert.key);
            cmd
        }
        Target::Portcullis | Target::Direct => bail!("{} is not a peer", peer.label()),
    };
    services.spawn(peer.key(), cmd, tmp.path(&format!("{}.log", peer.key())))
}

/// Each process of `services` (and its children) with the CPUs it may run on and its thread
/// count as `/proc` reads them: the evidence in the report that the pinning took.
fn describe_processes(services: &Services) -> Vec<Value> {
    services
        .0
        .iter()
        .flat_map(|s| {
            procs::process_tree(s.child.id()).into_iter().map(|pid| {
                let (allowed, threads) = procs::affinity_and_threads(pid);
                let name = if pid == s.child.id() { s.name.clone() } else { format!("{} (child {pid})", s.name) };
                json!({ "name": name, "pid": pid, "cpus_allowed": allowed, "threads": threads })
            })
        })
        .collect()
}

fn load_text(o: &Options) -> String {
    format!(
        "wrk 1 thread, {} connections (h1) and {STREAM_CONNECTIONS} (stream-1mib); h2load and oha {} (h3, h2-oha) 1 thread, {} connections × {} concurrent streams; portcullis-loadgen (one thread): {WS_CONNECTIONS} WebSocket connections, {HANDSHAKE_CONNECTIONS} concurrent new connections, {} idle connections; GET {} on the demo upstream; proxies to upstream over {}",
        o.connections,
        loadgen::OHA_VERSION,
        o.h2_clients,
        o.h2_streams,
        o.idle,
        o.path,
        if o.upstream_scheme == "h2c" { "h2c (HTTP/2 prior knowledge)" } else { "HTTP/1.1 keep-alive" }
    )
}

/// What every run needs to know.
struct Bench<'a> {
    opts: &'a Options,
    pinning: Pinning,
    tmp: &'a TempDir,
    upstream_pid: u32,
    /// The services' pids (and their children), left out of the "foreign CPU" sum.
    ours: HashSet<u32>,
    /// oha's binary, when an oha scenario runs.
    oha: Option<PathBuf>,
    loadgen: PathBuf,
}

impl Bench<'_> {
    /// Warm-up for each target, then `runs` measured rounds, each round running every target
    /// once in turn, so that slow drift (thermal, a neighbour's compile starting) hits all
    /// of them alike.
    fn scenario(&self, s: &Scenario) -> anyhow::Result<ScenarioResult> {
        eprintln!(
            "\n==> bench: {} ({}): {} s warm-up per target, then {} × {} s",
            s.name, s.title, self.opts.warmup, self.opts.runs, self.opts.duration
        );
        if self.opts.warmup > 0 {
            for e in &s.endpoints {
                let w = self
                    .measure(s, e, self.opts.warmup)
                    .with_context(|| format!("warm-up against {} ({})", e.label, e.url()))?;
                if w.load.errors > 0 || w.load.requests == 0 {
                    bail!(
                        "warm-up against {} ({}): {} requests, {} errors; is the route right?",
                        e.label,
                        e.url(),
                        w.load.requests,
                        w.load.errors
                    );
                }
            }
        }
        let mut targets: Vec<TargetRuns> =
            s.endpoints.iter().map(|e| TargetRuns { target: e.target, url: e.url(), samples: Vec::new() }).collect();
        for i in 1..=self.opts.runs {
            for (e, runs) in s.endpoints.iter().zip(&mut targets) {
                let sample = self
                    .measure(s, e, self.opts.duration)
                    .with_context(|| format!("{} run {i} against {} ({})", s.name, e.label, e.url()))?;
                eprintln!(
                    "    run {i} {:10}: {:>10.1} {}  p50 {:>8}  p99 {:>8}  errors {}{}",
                    e.label,
                    sample.figure,
                    s.unit.label(),
                    report::fmt_latency(sample.load.p50_us),
                    report::fmt_latency(sample.load.p99_us),
                    sample.load.errors,
                    noisy_note(&sample),
                );
                runs.samples.push(sample);
            }
        }
        Ok(ScenarioResult { name: s.name, title: s.title, tool: s.tool, unit: s.unit, targets })
    }

    /// The load generator's command line for one run.
    fn command(&self, s: &Scenario, e: &Endpoint, secs: u64) -> Command {
        let program = match (s.tool, &self.oha) {
            (Tool::Oha, Some(oha)) => oha.clone(),
            (Tool::Wrk | Tool::H2load | Tool::Oha, _) => PathBuf::from(s.tool.name()),
            (Tool::WsEcho | Tool::Handshake | Tool::Hold, _) => self.loadgen.clone(),
        };
        let mut cmd = Pinning::command(self.pinning.rest, program);
        let url = e.url();
        match s.tool {
            Tool::Oha => {
                // One worker thread, as wrk and h2load get; c connections × p streams.
                let version = if s.name == "h3" && e.tls { "3" } else { "2" };
                cmd.args(["--no-tui", "--insecure", "--worker-threads", "1", "--output-format", "json"]);
                cmd.args(["--http-version", version, "-c", &self.opts.h2_clients.to_string()]);
                cmd.args(["-p", &self.opts.h2_streams.to_string(), "-z", &format!("{secs}s"), &url]);
            }
            Tool::Wrk => {
                let c = if s.unit == Unit::MiB { STREAM_CONNECTIONS } else { self.opts.connections };
                for h in &e.headers {
                    cmd.args(["-H", h]);
                }
                cmd.args(["-t1", &format!("-c{c}"), &format!("-d{secs}s"), "--timeout", "5s", "--latency", &url]);
            }
            Tool::H2load => {
                let log = self.tmp.path("h2load-requests.log");
                let _ = std::fs::remove_file(&log);
                cmd.args(["-t1", &format!("-c{}", self.opts.h2_clients), &format!("-m{}", self.opts.h2_streams)]);
                cmd.args(["-D", &secs.to_string()]).arg(format!("--log-file={}", log.display())).arg(url);
            }
            Tool::WsEcho => {
                cmd.args(["ws-echo", "--addr", &e.addr.to_string(), "--path", &e.path]);
                cmd.args(["--connections", &WS_CONNECTIONS.to_string(), "--duration", &secs.to_string()]);
                if e.tls {
                    cmd.arg("--tls");
                }
            }
            Tool::Handshake => {
                cmd.args(["handshake", "--addr", &e.addr.to_string(), "--path", &e.path]);
                cmd.args(["--connections", &HANDSHAKE_CONNECTIONS.to_string(), "--duration", &secs.to_string()]);
                if !e.tls {
                    cmd.arg("--plain");
                }
            }
            Tool::Hold => {
                cmd.args(["hold", "--addr", &e.addr.to_string(), "--path", &e.path]);
                cmd.args(["--connections", &self.opts.idle.to_string()]);
                if e.tls {
                    cmd.arg("--tls");
                }
            }
        }
        cmd
    }

    /// One run of the scenario's load generator against `e` for `secs`, pinned next to the
    /// upstream, with the CPU time of every process read before and after.
    ///
    /// Against Portcullis it also checks the proxy's own request counter against the tool's:
    /// the listeners use SO_REUSEPORT, so a stray process bound to the same port would
    /// silently take part of the load (and its answers, a redirect say, would count as
    /// successes).
    fn measure(&self, s: &Scenario, e: &Endpoint, secs: u64) -> anyhow::Result<Sample> {
        let cmd = self.command(s, e, secs);
        let proxied = e.target != Target::Direct;
        let counted = s.tool != Tool::WsEcho;
        let answered_before = e.metrics.filter(|_| counted).map(procs::proxy_answered).transpose()?;
        let before = procs::all_process_ticks();
        let proxy_before = if proxied { procs::tree_ticks(e.pid) } else { None };
        let upstream_before = procs::cpu_ticks(self.upstream_pid);
        let started = Instant::now();
        let stdout_path = self.tmp.path("loadgen.out");
        let (stdout, loadgen_ticks) = run_bounded(cmd, Duration::from_secs(secs) + LOADGEN_GRACE, &stdout_path)?;
        let wall = started.elapsed().as_secs_f64();
        let proxy_after = if proxied { procs::tree_ticks(e.pid) } else { None };
        let upstream_after = procs::cpu_ticks(self.upstream_pid);
        let after = procs::all_process_ticks();
        let answered_after = e.metrics.filter(|_| counted).map(procs::proxy_answered).transpose()?;

        let load = match s.tool {
            Tool::Wrk => loadgen::parse_wrk(&stdout)?,
            Tool::Oha => loadgen::parse_oha(&stdout)?,
            Tool::H2load => {
                let log = std::fs::read_to_string(self.tmp.path("h2load-requests.log"))
                    .context("reading h2load's --log-file")?;
                loadgen::parse_h2load(&stdout, &log)?
            }
            Tool::WsEcho | Tool::Handshake | Tool::Hold => loadgen::parse_loadgen(&stdout)?,
        };
        if let (Some(b), Some(a)) = (answered_before, answered_after) {
            let answered = a.saturating_sub(b);
            // Requests cut off at the end of the run can be counted by the proxy and not by
            // the tool, never the other way round (beyond rounding).
            if (answered as f64) < load.requests as f64 * 0.99 {
                bail!(
                    "Portcullis counted {answered} requests but {} got {} responses: is another process listening on {} too (SO_REUSEPORT)?",
                    s.tool.name(),
                    load.requests,
                    e.url()
                );
            }
        }
        let hz = procs::clock_ticks_per_second();
        let responses = load.requests.max(1) as f64;
        let secs_of = |ticks: u64| ticks as f64 / hz;
        let proxy_ticks = match (proxy_before, proxy_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let upstream_ticks = upstream_after.unwrap_or(0).saturating_sub(upstream_before.unwrap_or(0));
        let (foreign, foreign_top) = procs::foreign_usage(&before, &after, &self.ours);
        let figure = match s.unit {
            Unit::MiB => load.rps * load.bytes_per_response / f64::from(1u32 << 20),
            _ => load.rps,
        };
        Ok(Sample {
            figure,
            proxy_cpu_us: proxy_ticks.map(|t| secs_of(t) * 1e6 / responses),
            proxy_util: proxy_ticks.map(|t| secs_of(t) / wall),
            upstream_cpu_us: secs_of(upstream_ticks) * 1e6 / responses,
            loadgen_util: secs_of(loadgen_ticks) / wall,
            foreign_util: secs_of(foreign) / wall,
            foreign_top: foreign_top.map(|(name, t)| format!("{name} {:.0}%", secs_of(t) / wall * 100.0)),
            load,
        })
    }

    /// Resident memory per idle connection: each run opens `--idle` connections (one request
    /// each, then nothing), reads the serving process tree's RSS once they are all open, and
    /// closes them. The baseline is the RSS before the first run, so memory an allocator keeps
    /// after the first run's connections close is still charged to later runs (a process
    /// holding 10,000 connections needs that memory whether or not it was reused).
    fn idle(&self, s: &Scenario) -> anyhow::Result<ScenarioResult> {
        eprintln!("\n==> bench: {} ({}): {} × {} connections", s.name, s.title, self.opts.runs, self.opts.idle);
        let baselines: Vec<u64> = s.endpoints.iter().map(|e| procs::tree_rss_kib(e.pid)).collect();
        let mut targets: Vec<TargetRuns> =
            s.endpoints.iter().map(|e| TargetRuns { target: e.target, url: e.url(), samples: Vec::new() }).collect();
        for i in 1..=self.opts.runs {
            for ((e, runs), baseline) in s.endpoints.iter().zip(&mut targets).zip(&baselines) {
                let (open, rss) =
                    self.hold(s, e).with_context(|| format!("{} run {i} against {}", s.name, e.target.label()))?;
                let per_conn = rss.saturating_sub(*baseline) as f64 / open.max(1) as f64;
                eprintln!(
                    "    run {i} {:10}: {open} open, RSS {:.1} MiB (baseline {:.1} MiB): {per_conn:.1} KiB per connection",
                    e.target.label(),
                    rss as f64 / 1024.0,
                    *baseline as f64 / 1024.0
                );
                let load = LoadResult {
                    rps: per_conn,
                    p50_us: f64::NAN,
                    p99_us: f64::NAN,
                    requests: open,
                    errors: u64::from(open < u64::from(self.opts.idle)),
                    bytes_per_response: 0.0,
                };
                runs.samples.push(Sample {
                    figure: per_conn,
                    load,
                    proxy_cpu_us: None,
                    proxy_util: None,
                    upstream_cpu_us: f64::NAN,
                    loadgen_util: f64::NAN,
                    foreign_util: 0.0,
                    foreign_top: None,
                });
            }
        }
        Ok(ScenarioResult { name: s.name, title: s.title, tool: s.tool, unit: s.unit, targets })
    }

    /// One `hold` run: returns the connections opened and the RSS (KiB) with them open.
    fn hold(&self, s: &Scenario, e: &Endpoint) -> anyhow::Result<(u64, u64)> {
        let mut cmd = self.command(s, e, 0);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let guard = KillOnDrop(&mut child);
        let stdout = guard.0.stdout.take().context("hold's stdout")?;
        // The generator has its own deadline (it exits if it cannot open them in time), so
        // this read ends.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let result = loadgen::parse_loadgen_hold(&line)?;
        // Let the last responses' buffers be released and the counters settle.
        std::thread::sleep(Duration::from_secs(1));
        let rss = procs::tree_rss_kib(e.pid);
        if let Some(mut stdin) = guard.0.stdin.take() {
            let _ = stdin.write_all(b"close\n");
        }
        let status = guard.0.wait()?;
        drop(guard);
        if !status.success() {
            bail!("{} exited with {status}", s.tool.name());
        }
        // Let the server notice the closes before the next target's baseline moves.
        std::thread::sleep(Duration::from_secs(1));
        Ok((result, rss))
    }
}

/// Kills a child that is dropped before it was waited for (an error in between).
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn noisy_note(sample: &Sample) -> String {
    if sample.foreign_util > NOISY_FOREIGN_CPU {
        format!(
            "  (noisy: other processes used {:.0}% of a CPU; busiest {})",
            sample.foreign_util * 100.0,
            sample.foreign_top.as_deref().unwrap_or("?")
        )
    } else {
        String::new()
    }
}

/// Runs a load generator with a hard deadline (a hung tool is killed, never waited on
/// forever), sampling its CPU time every 50 ms while it runs. Returns its stdout and the
/// last CPU sample.
fn run_bounded(mut cmd: Command, limit: Duration, stdout_path: &std::path::Path) -> anyhow::Result<(String, u64)> {
    let stderr_path = stdout_path.with_extension("err");
    cmd.stdin(Stdio::null()).stdout(std::fs::File::create(stdout_path)?).stderr(std::fs::File::create(&stderr_path)?);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    let mut ticks = 0;
    let status = loop {
        if let Some(t) = procs::cpu_ticks(child.id()) {
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
        bail!("{cmd:?} failed ({status}):\n{stdout}\n{}", procs::tail(&stderr_path, 20));
    }
    Ok((stdout, ticks))
}

/// Start-up with 10,001 routes against start-up with one: how long `serve` takes from spawn
/// to `/readyz` (parse, validate, compile the route table, bind), and the RSS once ready.
pub struct RoutesScale {
    pub routes: usize,
    /// Medians over the runs, (1 route, 10,001 routes).
    pub ready_ms: (f64, f64),
    pub rss_kib: (f64, f64),
    pub runs: usize,
}

/// The route mix of `benches/route_lookup.rs`: 2,500 hosts with a prefix and an exact path
/// each, 2,500 wildcard hosts with a regex and a prefix each, and a catch-all.
fn many_routes_yaml(upstream: &str) -> (String, usize) {
    let mut yaml = String::from("routes:\n");
    for i in 0..2500 {
        let _ = writeln!(yaml, " - {{from: https://host{i}.example.com, prefix: /api/v{i}, to: {upstream}}}");
        let _ = writeln!(yaml, " - {{from: https://host{i}.example.com, path: /exact/{i}, to: {upstream}}}");
        let _ =
            writeln!(yaml, " - {{from: \"https://*.w{i}.example.com\", regex: \"/items/[0-9]+/{i}\", to: {upstream}}}");
        let _ = writeln!(yaml, " - {{from: \"https://*.w{i}.example.com\", prefix: /static, to: {upstream}}}");
    }
    let _ = writeln!(yaml, " - {{from: \"https://*\", to: {upstream}}}");
    (yaml, 10_001)
}

fn routes_scale(binary: &std::path::Path, pinning: Pinning, tmp: &TempDir, runs: usize) -> anyhow::Result<RoutesScale> {
    eprintln!("\n==> bench: routes-10k: start-up time and memory with 1 and 10,001 routes, {runs} starts each");
    let upstream = "http://127.0.0.1:9";
    let (many, n) = many_routes_yaml(upstream);
    let one = format!("routes:\n - {{from: \"https://*\", to: {upstream}}}\n");
    let mut ready = (Vec::new(), Vec::new());
    let mut rss = (Vec::new(), Vec::new());
    for i in 1..=runs {
        for (label, routes) in [("1 route", &one), ("10,001 routes", &many)] {
            let ports = procs::distinct_ports(4)?;
            let p = ProxyPorts::from_slice(&ports);
            let config = tmp.path("routes.yaml");
            let head = format!(
                "address: \"127.0.0.1:{}\"\ninsecure_server: true\nhttp_redirect_address: \"127.0.0.1:{}\"\nadmin_address: \"127.0.0.1:{}\"\nmetrics_address: \"127.0.0.1:{}\"\n",
                p.address, p.http_redirect, p.admin, p.metrics
            );
            std::fs::write(&config, head + routes)?;
            let mut services = Services::default();
            let mut cmd = Pinning::command(pinning.proxy, binary);
            cmd.args(["--log-level", "warn", "serve", "--watch-interval", "1h", "--config"]).arg(&config);
            let started = Instant::now();
            let pid = services.spawn("portcullis (routes)", cmd, tmp.path("routes.log"))?;
            loop {
                services.check_alive()?;
                if procs::http_status(p.admin(), "/readyz").is_ok_and(|c| c == 200) {
                    break;
                }
                if started.elapsed() > READY_TIMEOUT {
                    bail!("Portcullis with {label} was not ready within {READY_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let ms = started.elapsed().as_secs_f64() * 1e3;
            std::thread::sleep(Duration::from_millis(500));
            let kib = procs::tree_rss_kib(pid) as f64;
            eprintln!("    start {i} {label:14}: ready in {ms:.0} ms, RSS {:.1} MiB", kib / 1024.0);
            let (r, m) = if label == "1 route" { (&mut ready.0, &mut rss.0) } else { (&mut ready.1, &mut rss.1) };
            r.push(ms);
            m.push(kib);
        }
    }
    Ok(RoutesScale {
        routes: n,
        ready_ms: (report::median(ready.0), report::median(ready.1)),
        rss_kib: (report::median(rss.0), report::median(rss.1)),
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_defaults_and_errors() {
        let o = Options::parse(&[]).unwrap().unwrap();
        assert_eq!((o.runs, o.idle, o.path.as_str()), (3, 10_000, "/status/200"));
        assert!(Options::parse(&["--only".into(), "h4".into()]).is_err());
        assert!(Options::parse(&["--runs=0".into()]).is_err());
        let o = Options::parse(&["--only=h1,idle-tls".into()]).unwrap().unwrap();
        assert!(o.wants("idle-tls") && !o.wants("h2-tls"));
        assert_eq!(o.peers, Target::PEERS.to_vec(), "every peer by default");
    }

    #[test]
    fn peers_option() {
        let o = Options::parse(&["--peers".into(), "pingora,nginx".into()]).unwrap().unwrap();
        assert_eq!(o.peers, vec![Target::Nginx, Target::Pingora], "in column order");
        assert!(Options::parse(&["--peers=none".into()]).unwrap().unwrap().peers.is_empty());
        assert!(Options::parse(&["--peers=envoy".into()]).is_err());
        assert!(Options::parse(&["--peers=direct".into()]).is_err(), "not a peer");
    }

    #[test]
    fn many_routes_are_many() {
        let (yaml, n) = many_routes_yaml("http://127.0.0.1:9");
        assert_eq!(yaml.lines().filter(|l| l.starts_with(" - ")).count(), n);
    }
}
