//! The `tunnel` scenario (issue 17): TCP throughput through a `tcp+` route and UDP
//! datagrams per second through a `udp+` route, beside the direct paths and HAProxy, in one
//! run. Targets: TCP at least 0.7 of direct and at least 1.0 of HAProxy.
//!
//! TCP: `portcullis-loadgen tcp-push` moves `TCP_BYTES` in one direction over one
//! connection to `portcullis-loadgen sink`, timed from the first byte to the last (setup
//! excluded), up (client to sink) and down, on four paths:
//!
//! - `direct`: plain TCP to the sink, the limit of the machine;
//! - `direct TLS`: TLS 1.3 straight to a TLS sink (the same certificate), which puts a price
//!   on TLS alone; client and sink share one CPU here, so both ends' crypto is on it;
//! - `HAProxy`: TLS to HAProxy in `mode tcp` (`bind ... ssl crt`, one thread) which forwards
//!   plain TCP to the sink: the peer, doing what a TLS-terminating TCP proxy does;
//! - `Portcullis`: TLS to Portcullis, an HTTP/1.1 `CONNECT sink.bench:9000`, then the
//!   tunnel's bytes (its `tcp+https://sink.bench:9000` route to the plain sink).
//!
//! UDP: `portcullis-loadgen udp-rr` keeps `UDP_WINDOW` datagrams of `UDP_SIZE` bytes in flight
//! to a UDP echo server and sends one more per echo, for `--duration` seconds, straight to the
//! echo server and through `portcullis tunnel udp` (the release binary's client, with
//! `--http3`: HTTP/3 datagrams; and `--http1`: DATAGRAM capsules on a TLS stream) to
//! Portcullis's `udp+https://echo.bench:7` route. The UDP figure through Portcullis includes
//! the client's work (a second process on the load generator's CPU), so it is what a user of
//! `portcullis tunnel` gets, not the proxy's cost alone.
//!
//! Pinning as for the other scenarios: Portcullis and HAProxy on the proxy CPU (one of them
//! loaded at a time), the sinks, the echo server, the load generator and the tunnel client on
//! the other. Every path runs once per run, interleaved, `--runs` times; medians reported.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::peers::{self, ProxyPorts};
use super::procs::{self, Pinning, Services, TempDir};
use super::report::median;
use super::{describe_processes, run_bounded, Options};

/// What the scenario needs on `PATH`, and the Debian packages.
pub const TOOLS: &[(&str, &str)] = &[("haproxy", "haproxy"), ("openssl", "openssl")];

/// Bytes per TCP transfer: 1 GiB.
const TCP_BYTES: u64 = 1 << 30;
/// The warm-up transfer, per path and direction.
const WARMUP_BYTES: u64 = 64 << 20;
/// One transfer may take this long before the run fails (1 GiB at 10 MiB/s).
const TCP_LIMIT: Duration = Duration::from_secs(100);
const UDP_WINDOW: u32 = 32;
const UDP_SIZE: usize = 512;
/// The CONNECT target and the CONNECT-UDP target (the routes' hosts and ports).
const TCP_TARGET: &str = "sink.bench:9000";
const UDP_TARGET: &str = "echo.bench:7";

/// The TCP paths, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpPath {
    Direct,
    DirectTls,
    Haproxy,
    Portcullis,
}

impl TcpPath {
    const ALL: [TcpPath; 4] = [TcpPath::Direct, TcpPath::DirectTls, TcpPath::Haproxy, TcpPath::Portcullis];
    fn key(self) -> &'static str {
        match self {
            TcpPath::Direct => "direct",
            TcpPath::DirectTls => "direct_tls",
            TcpPath::Haproxy => "haproxy",
            TcpPath::Portcullis => "portcullis",
        }
    }
    fn label(self) -> &'static str {
        match self {
            TcpPath::Direct => "direct (plain TCP to the sink)",
            TcpPath::DirectTls => "direct TLS (TLS sink)",
            TcpPath::Haproxy => "HAProxy (mode tcp, TLS terminated)",
            TcpPath::Portcullis => "Portcullis (TLS + HTTP/1.1 CONNECT)",
        }
    }
}

const DIRECTIONS: [&str; 2] = ["up", "down"];

/// The UDP paths.
const UDP_PATHS: [(&str, &str); 3] = [
    ("direct", "direct (UDP to the echo server)"),
    ("portcullis_h3", "Portcullis via `portcullis tunnel udp --http3` (HTTP/3 datagrams)"),
    ("portcullis_h1", "Portcullis via `portcullis tunnel udp --http1` (HTTP/1.1 capsules)"),
];

/// One UDP path's runs, `(datagrams/s, stalls)` each, or why it was not measured.
type UdpRuns = (&'static str, Result<Vec<(f64, u64)>, String>);

/// One TCP transfer's figures.
#[derive(Clone, Debug)]
struct TcpSample {
    mib_per_sec: f64,
    /// CPU seconds the proxy (Portcullis or HAProxy) spent per GiB moved.
    proxy_cpu_s_per_gib: Option<f64>,
}

/// The scenario's figures.
pub struct TunnelBench {
    runs: usize,
    duration: u64,
    /// `(path, direction)` -> samples.
    tcp: Vec<(TcpPath, &'static str, Vec<TcpSample>)>,
    /// UDP path key -> (datagrams/s, stalls) per run, or why the path was not measured.
    udp: Vec<UdpRuns>,
    haproxy_version: String,
}

pub fn run(
    opts: &Options,
    binary: &Path,
    loadgen: &Path,
    pinning: Pinning,
    tmp: &TempDir,
) -> anyhow::Result<(TunnelBench, Vec<Value>)> {
    let cert = peers::certificate(&tmp.0)?;
    let ports = procs::distinct_ports(10)?;
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (sink, tls_sink, echo, haproxy) =
        (loopback(ports[0]), loopback(ports[1]), loopback(ports[2]), loopback(ports[3]));
    let proxy = ProxyPorts::from_slice(&ports[4..8]);
    let (udp_h3, udp_h1) = (loopback(ports[8]), loopback(ports[9]));
    let mut services = Services::default();

    let mut cmd = Pinning::command(pinning.rest, loadgen);
    cmd.args(["sink", "--listen", &sink.to_string()]);
    let sink_pid = services.spawn("sink (tunnel)", cmd, tmp.path("tunnel-sink.log"))?;
    let mut cmd = Pinning::command(pinning.rest, loadgen);
    cmd.args(["sink", "--listen", &tls_sink.to_string(), "--cert"]).arg(&cert.cert).arg("--key").arg(&cert.key);
    services.spawn("TLS sink (tunnel)", cmd, tmp.path("tunnel-tls-sink.log"))?;
    let mut cmd = Pinning::command(pinning.rest, loadgen);
    cmd.args(["udp-echo", "--listen", &echo.to_string()]);
    services.spawn("UDP echo (tunnel)", cmd, tmp.path("tunnel-udp-echo.log"))?;

    let config = tmp.path("portcullis-tunnel.yaml");
    std::fs::write(&config, config_yaml(&proxy, sink, echo, &cert)).context("writing the tunnel scenario's config")?;
    let mut cmd = Pinning::command(pinning.proxy, binary);
    cmd.args(["--log-level", "warn", "serve", "--watch-interval", "1h", "--config"]).arg(&config);
    let portcullis_pid = services.spawn("portcullis (tunnel)", cmd, tmp.path("portcullis-tunnel.log"))?;
    procs::wait_for_200(&mut services, proxy.admin(), "/readyz", "Portcullis (tunnel)'s /readyz")?;

    let haproxy_cfg = tmp.path("haproxy-tunnel.cfg");
    std::fs::write(&haproxy_cfg, haproxy_cfg_text(haproxy.port(), sink, &cert.combined))?;
    let mut cmd = Pinning::command(pinning.proxy, "haproxy");
    cmd.arg("-db").arg("-f").arg(&haproxy_cfg);
    let haproxy_pid = services.spawn("haproxy (tunnel)", cmd, tmp.path("haproxy-tunnel.log"))?;
    for (addr, what) in [(sink, "the sink"), (tls_sink, "the TLS sink"), (haproxy, "HAProxy")] {
        wait_listening(&mut services, addr, what)?;
    }

    // The UDP tunnel clients; a client that does not start leaves its row unmeasured, with
    // the reason, rather than failing the TCP figures.
    let mut clients = Vec::new();
    let mut client_logs = Vec::new();
    for (listen, flag) in [(udp_h3, "--http3"), (udp_h1, "--http1")] {
        let mut cmd = Pinning::command(pinning.rest, binary);
        cmd.args(["tunnel", "udp", UDP_TARGET, "--listen", &listen.to_string()])
            .args(["--proxy-url", &format!("https://127.0.0.1:{}", proxy.address)])
            // The shared certificate is self-signed by openssl with `CA:TRUE`, which webpki
            // refuses as a server's own certificate (`--ca-file` would fail the handshake);
            // the load generator does not check it either.
            .args(["--insecure", flag]);
        let log = tmp.path(&format!("tunnel-client{flag}.log"));
        let mut one = Services::default();
        one.spawn(&format!("portcullis tunnel udp {flag}"), cmd, log.clone())?;
        client_logs.push(log);
        std::thread::sleep(Duration::from_millis(300));
        match one.check_alive() {
            Ok(()) => {
                services.0.append(&mut one.0);
                clients.push(Ok(listen));
            }
            Err(e) => clients.push(Err(format!("{e:#}"))),
        }
    }

    let push = |path: TcpPath, direction: &str, bytes: u64| -> anyhow::Result<TcpSample> {
        let (addr, via, pid) = match path {
            TcpPath::Direct => (sink, "plain", None),
            TcpPath::DirectTls => (tls_sink, "tls", None),
            TcpPath::Haproxy => (haproxy, "tls", Some(haproxy_pid)),
            TcpPath::Portcullis => (proxy.main(), "connect", Some(portcullis_pid)),
        };
        let mut cmd = Pinning::command(pinning.rest, loadgen);
        cmd.args(["tcp-push", "--addr", &addr.to_string(), "--via", via, "--direction", direction])
            .args(["--bytes", &bytes.to_string(), "--authority", TCP_TARGET, "--timeout"])
            .arg(TCP_LIMIT.as_secs().to_string());
        let before = pid.and_then(procs::tree_ticks);
        let (out, _) = run_bounded(cmd, TCP_LIMIT + Duration::from_secs(10), &tmp.path("tunnel-push.out"))?;
        let after = pid.and_then(procs::tree_ticks);
        let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("tcp-push printed {out:?}"))?;
        let mib_per_sec = v["mib_per_sec"].as_f64().context("tcp-push: no mib_per_sec")?;
        let proxy_cpu_s_per_gib = before.zip(after).map(|(b, a)| {
            (a.saturating_sub(b)) as f64 / procs::clock_ticks_per_second() / (bytes as f64 / f64::from(1u32 << 30))
        });
        Ok(TcpSample { mib_per_sec, proxy_cpu_s_per_gib })
    };
    let rr = |addr: SocketAddr, secs: u64| -> anyhow::Result<(f64, u64)> {
        let mut cmd = Pinning::command(pinning.rest, loadgen);
        cmd.args(["udp-rr", "--addr", &addr.to_string(), "--duration", &secs.to_string()]).args([
            "--window",
            &UDP_WINDOW.to_string(),
            "--size",
            &UDP_SIZE.to_string(),
        ]);
        let (out, _) = run_bounded(cmd, Duration::from_secs(secs + 40), &tmp.path("tunnel-udp-rr.out"))?;
        let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("udp-rr printed {out:?}"))?;
        let dps = v["datagrams_per_sec"].as_f64().context("udp-rr: no datagrams_per_sec")?;
        Ok((dps, v["stalls"].as_u64().unwrap_or(0)))
    };
    let udp_addr = |key: &str| -> Result<SocketAddr, String> {
        match key {
            "direct" => Ok(echo),
            "portcullis_h3" => clients[0].clone(),
            _ => clients[1].clone(),
        }
    };

    eprintln!("==> bench: tunnel: warm-up");
    for path in TcpPath::ALL {
        for d in DIRECTIONS {
            push(path, d, WARMUP_BYTES).with_context(|| format!("tunnel warm-up, {} {d}", path.label()))?;
        }
    }
    let mut tcp: Vec<(TcpPath, &'static str, Vec<TcpSample>)> =
        TcpPath::ALL.iter().flat_map(|p| DIRECTIONS.map(|d| (*p, d, Vec::new()))).collect();
    let mut udp: Vec<UdpRuns> = UDP_PATHS.iter().map(|(k, _)| (*k, udp_addr(k).map(|_| Vec::new()))).collect();
    for run in 1..=opts.runs {
        eprintln!("==> bench: tunnel: run {run}/{}", opts.runs);
        for (path, d, samples) in &mut tcp {
            services.check_alive()?;
            let s = push(*path, d, TCP_BYTES).with_context(|| format!("tunnel run {run}, {} {d}", path.label()))?;
            eprintln!("    {} {d}: {:.0} MiB/s", path.label(), s.mib_per_sec);
            samples.push(s);
        }
        for (key, samples) in &mut udp {
            let Ok(list) = samples else { continue };
            let addr = udp_addr(key).map_err(anyhow::Error::msg)?;
            match rr(addr, opts.duration) {
                Ok((v, stalls)) => {
                    eprintln!("    UDP {key}: {v:.0} datagrams/s ({stalls} stalls)");
                    list.push((v, stalls));
                }
                Err(e) => {
                    let log = match *key {
                        "portcullis_h3" => procs::tail(&client_logs[0], 5),
                        "portcullis_h1" => procs::tail(&client_logs[1], 5),
                        _ => String::new(),
                    };
                    *samples = Err(format!("{e:#}\nthe tunnel client's log: {log}"));
                }
            }
        }
    }
    let processes = describe_processes(&services);
    let haproxy_version =
        procs::command_output("haproxy", &["-v"]).and_then(|v| v.lines().next().map(str::to_owned)).unwrap_or_default();
    drop(services);
    let _ = sink_pid;
    Ok((TunnelBench { runs: opts.runs, duration: opts.duration, tcp, udp, haproxy_version }, processes))
}

/// Polls a TCP port until it accepts, failing early if a child died.
fn wait_listening(services: &mut Services, addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        services.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} ({addr}) did not listen within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config_yaml(p: &ProxyPorts, sink: SocketAddr, echo: SocketAddr, cert: &peers::Certificate) -> String {
    format!(
        "# Generated by `cargo xtask bench --only tunnel`.\n\
         address: \"127.0.0.1:{}\"\n\
         http_redirect_address: \"127.0.0.1:{}\"\n\
         admin_address: \"127.0.0.1:{}\"\n\
         metrics_address: \"127.0.0.1:{}\"\n\
         codec_type: http3\n\
         certificates:\n  - cert_file: \"{}\"\n    key_file: \"{}\"\n\
         routes:\n\
         \x20 - from: tcp+https://{TCP_TARGET}\n    to: tcp://{sink}\n\
         \x20 - from: udp+https://{UDP_TARGET}\n    to: udp://{echo}\n",
        p.address,
        p.http_redirect,
        p.admin,
        p.metrics,
        cert.cert.display(),
        cert.key.display(),
    )
}

/// HAProxy as a TLS-terminating TCP proxy, one thread, the same TLS settings as in peers.rs.
fn haproxy_cfg_text(port: u16, sink: SocketAddr, combined: &Path) -> String {
    format!(
        "# Generated by `cargo xtask bench --only tunnel`.
global
    nbthread 1
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-curves X25519:P-256
    tune.bufsize 32768

defaults
    mode tcp
    timeout connect 10s
    timeout client 300s
    timeout server 300s

frontend tunnel
    bind 127.0.0.1:{port} ssl crt {crt}
    default_backend sink

backend sink
    server sink {sink}
",
        crt = combined.display(),
    )
}

impl TunnelBench {
    fn tcp_median(&self, path: TcpPath, direction: &str) -> f64 {
        self.tcp
            .iter()
            .find(|(p, d, _)| *p == path && *d == direction)
            .map_or(f64::NAN, |(_, _, s)| median(s.iter().map(|x| x.mib_per_sec)))
    }

    fn cpu_median(&self, path: TcpPath, direction: &str) -> Option<f64> {
        let (_, _, s) = self.tcp.iter().find(|(p, d, _)| *p == path && *d == direction)?;
        let v: Vec<f64> = s.iter().filter_map(|x| x.proxy_cpu_s_per_gib).collect();
        (!v.is_empty()).then(|| median(v))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "\n## TCP and UDP tunnels (issue 17)\n");
        let _ = writeln!(
            md,
            "One connection moving {} MiB one way, timed from the first byte to the last; median of {} runs, \
             paths interleaved. {}.\n",
            TCP_BYTES >> 20,
            self.runs,
            self.haproxy_version
        );
        let _ = writeln!(md, "| TCP path | up MiB/s | down MiB/s | proxy CPU s/GiB (up, down) |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for path in TcpPath::ALL {
            let cpu = match (self.cpu_median(path, "up"), self.cpu_median(path, "down")) {
                (Some(u), Some(d)) => format!("{u:.2}, {d:.2}"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {cpu} |",
                path.label(),
                self.tcp_median(path, "up"),
                self.tcp_median(path, "down")
            );
        }
        let _ = writeln!(md);
        for (other, target) in [(TcpPath::Direct, 0.7), (TcpPath::Haproxy, 1.0), (TcpPath::DirectTls, f64::NAN)] {
            for d in DIRECTIONS {
                let ratio = self.tcp_median(TcpPath::Portcullis, d) / self.tcp_median(other, d);
                let verdict = if target.is_nan() {
                    String::new()
                } else if ratio >= target {
                    format!(" (target >= {target}: met)")
                } else {
                    format!(" (target >= {target}: **missed**)")
                };
                let _ = writeln!(md, "- Portcullis / {} {d}: {ratio:.2}{verdict}", other.label());
            }
        }
        let _ = writeln!(
            md,
            "\nUDP: {UDP_WINDOW} datagrams of {UDP_SIZE} bytes in flight, one sent per echo, {} s per run, median of {} \
             runs.\n",
            self.duration, self.runs
        );
        let _ = writeln!(md, "| UDP path | datagrams/s | / direct | stalls (all runs) |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let direct = match &self.udp.first() {
            Some((_, Ok(v))) => median(v.iter().map(|x| x.0)),
            _ => f64::NAN,
        };
        for ((_, label), (_, r)) in UDP_PATHS.iter().zip(&self.udp) {
            match r {
                Ok(v) => {
                    let m = median(v.iter().map(|x| x.0));
                    let stalls: u64 = v.iter().map(|x| x.1).sum();
                    let _ = writeln!(md, "| {label} | {m:.0} | {:.2} | {stalls} |", m / direct);
                }
                Err(e) => {
                    let why: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty()).take(8).collect();
                    let why = why.join("; ").replace('|', "/");
                    let _ = writeln!(md, "| {label} | not measured: {why} | - | - |");
                }
            }
        }
        md
    }

    pub fn json(&self) -> Value {
        let tcp: Vec<Value> = self
            .tcp
            .iter()
            .map(|(p, d, s)| {
                json!({
                    "path": p.key(), "direction": d, "mib_per_sec": s.iter().map(|x| x.mib_per_sec).collect::<Vec<_>>(),
                    "median": self.tcp_median(*p, d), "proxy_cpu_s_per_gib": self.cpu_median(*p, d),
                })
            })
            .collect();
        let udp: Vec<Value> = self
            .udp
            .iter()
            .map(|(k, r)| match r {
                Ok(v) => json!({
                    "path": k, "datagrams_per_sec": v.iter().map(|x| x.0).collect::<Vec<_>>(),
                    "stalls": v.iter().map(|x| x.1).collect::<Vec<_>>(), "median": median(v.iter().map(|x| x.0)),
                }),
                Err(e) => json!({"path": k, "error": e}),
            })
            .collect();
        let ratio = |other: TcpPath, d: &str| self.tcp_median(TcpPath::Portcullis, d) / self.tcp_median(other, d);
        json!({
            "tcp_bytes": TCP_BYTES, "runs": self.runs, "udp_window": UDP_WINDOW, "udp_size": UDP_SIZE,
            "tcp": tcp, "udp": udp,
            "ratios": {
                "portcullis_over_direct": {"up": ratio(TcpPath::Direct, "up"), "down": ratio(TcpPath::Direct, "down")},
                "portcullis_over_haproxy": {"up": ratio(TcpPath::Haproxy, "up"), "down": ratio(TcpPath::Haproxy, "down")},
                "portcullis_over_direct_tls": {"up": ratio(TcpPath::DirectTls, "up"), "down": ratio(TcpPath::DirectTls, "down")},
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_the_routes_and_the_sink() {
        let c = peers::Certificate { cert: "/c.pem".into(), key: "/k.pem".into(), combined: "/ck.pem".into() };
        let p = ProxyPorts::from_slice(&[1, 2, 3, 4]);
        let (sink, echo): (SocketAddr, SocketAddr) = ("127.0.0.1:9".parse().unwrap(), "127.0.0.1:10".parse().unwrap());
        let y = config_yaml(&p, sink, echo, &c);
        assert!(y.contains("  - from: tcp+https://sink.bench:9000\n    to: tcp://127.0.0.1:9\n"), "{y}");
        assert!(y.contains("  - from: udp+https://echo.bench:7\n    to: udp://127.0.0.1:10\n"), "{y}");
        let _: serde_yaml_ng::Value = serde_yaml_ng::from_str(&y).unwrap();
        let h = haproxy_cfg_text(5, sink, Path::new("/ck.pem"));
        assert!(
            h.contains("mode tcp")
                && h.contains("bind 127.0.0.1:5 ssl crt /ck.pem")
                && h.contains("server sink 127.0.0.1:9")
        );
    }

    #[test]
    fn ratios_and_verdicts() {
        let s = |v: f64| TcpSample { mib_per_sec: v, proxy_cpu_s_per_gib: None };
        let mut tcp = Vec::new();
        for (p, v) in [
            (TcpPath::Direct, 1000.0),
            (TcpPath::DirectTls, 600.0),
            (TcpPath::Haproxy, 500.0),
            (TcpPath::Portcullis, 650.0),
        ] {
            for d in DIRECTIONS {
                tcp.push((p, d, vec![s(v)]));
            }
        }
        let b = TunnelBench {
            runs: 1,
            duration: 1,
            tcp,
            udp: vec![
                ("direct", Ok(vec![(100.0, 0)])),
                ("portcullis_h3", Ok(vec![(50.0, 2)])),
                ("portcullis_h1", Err("no".into())),
            ],
            haproxy_version: String::new(),
        };
        let md = b.markdown();
        assert!(md.contains("direct (plain TCP to the sink) up: 0.65 (target >= 0.7: **missed**)"), "{md}");
        assert!(md.contains("HAProxy (mode tcp, TLS terminated) up: 1.30 (target >= 1: met)"), "{md}");
        assert!(md.contains("| 50 | 0.50 | 2 |") && md.contains("not measured: no"), "{md}");
        assert!((b.json()["ratios"]["portcullis_over_haproxy"]["down"].as_f64().unwrap() - 1.3).abs() < 1e-9);
    }
}
