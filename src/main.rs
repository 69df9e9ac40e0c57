//! The `portcullis` binary: every subcommand and all wiring, behind one clap-parsed config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::proxy::Applied;
use portcullis::server;
use portcullis::source::file::{self, FileSource};
use portcullis::source::yaml::{parse_config, yaml_to_value, NoMaterial};

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Kubernetes ingress controller and proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,access=warn`.
    #[arg(long, global = true, default_value = "info", env = "PORTCULLIS_LOG")]
    log_level: String,
    /// How long the process may take to exit after SIGTERM (set it to the pod's
    /// `terminationGracePeriodSeconds`): the shutdown drain lasts `drain_timeout`, but ends
    /// 2 s before this so that the process exits in time.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration, env = "PORTCULLIS_TERMINATION_GRACE_PERIOD")]
    termination_grace_period: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data plane from a YAML file, without Kubernetes; edits are applied live.
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// How often the file (and the certificates it names) is checked for changes.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        watch_interval: Duration,
    },
    /// Validate a config file: print every error and exit 1 if there is any.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The quickstart: the demo upstream plus the proxy serving examples/demo.yaml.
    Demo {
        /// Where the demo upstream listens (the example config points here).
        #[arg(long, default_value = "127.0.0.1:9000")]
        upstream: SocketAddr,
    },
    /// Run only the built-in demo upstream (echo, delays, streams, SSE, WebSocket).
    DemoUpstream {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Name reported in every answer (to see load balancing).
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Run in a cluster: watch Ingresses, Routes, ProxyConfig, Services, EndpointSlices and
    /// Secrets, and serve them from the in-process data plane.
    Controller(portcullis::k8s::controller::Options),
    /// Print the CustomResourceDefinitions (Route, ProxyConfig) as YAML.
    Crds,
    /// Reach a tcp+ or udp+ route through the proxy: a local port, stdin/stdout, or a local
    /// UDP socket (docs/tunnel-client.md).
    Tunnel(TunnelArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args, Debug)]
struct TunnelArgs {
    /// `tcp` (CONNECT) or `udp` (CONNECT-UDP).
    #[arg(value_parser = ["tcp", "udp"])]
    protocol: String,
    /// The route's host and port, as in its `from` (db.example.com:5432).
    target: String,
    /// `ADDRESS` to listen on (TCP, or UDP for `udp`), or `-` for stdin/stdout (TCP).
    #[arg(long, default_value = "-")]
    listen: portcullis::client::Listen,
    /// The proxy, when it is not reached at the target's own name: https://host[:port].
    #[arg(long)]
    proxy_url: Option<String>,
    /// A bearer token (else a cached one, else a browser sign-in on 401).
    #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
    token: Option<portcullis::client::Token>,
    /// Trust these CA certificates (PEM) instead of the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any certificate of the proxy (testing only).
    #[arg(long)]
    insecure: bool,
    /// A client certificate (PEM) for a proxy that asks for one.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Where signed-in tokens are cached (default: ~/.config/portcullis/tokens).
    #[arg(long)]
    token_dir: Option<PathBuf>,
    /// UDP: how long a local peer may send nothing before its tunnel closes (its next
    /// datagram opens a new one).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    udp_idle_timeout: Duration,
    /// HTTP/1.1 only (UDP: capsules on the stream).
    #[arg(long, conflicts_with_all = ["http2", "http3"])]
    http1: bool,
    /// HTTP/2 only (TCP).
    #[arg(long, conflicts_with = "http3")]
    http2: bool,
    /// HTTP/3 only (UDP: QUIC datagrams).
    #[arg(long)]
    http3: bool,
}

/// `portcullis tunnel`: the typed options, then the client.
async fn tunnel(args: TunnelArgs) -> anyhow::Result<ExitCode> {
    use portcullis::client::{self, Transport};
    let (host, port) = client::parse_target(&args.target).map_err(anyhow::Error::msg)?;
    let transport = match (args.http1, args.http2, args.http3) {
        (true, _, _) => Transport::Http1,
        (_, true, _) => Transport::Http2,
        (_, _, true) => Transport::Http3,
        _ => Transport::Auto,
    };
    let opts = client::Options {
        host,
        port,
        listen: args.listen,
        proxy_url: args.proxy_url,
        transport,
        token: args.token.filter(|t| !t.expose().is_empty()),
        ca_file: args.ca_file,
        insecure: args.insecure,
        client_cert: args.client_cert,
        client_key: args.client_key,
        token_dir: args.token_dir,
        udp_idle: args.udp_idle_timeout,
    };
    if args.protocol == "udp" {
        client::run_udp(opts).await?;
    } else {
        client::run_tcp(opts).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    portcullis::config::duration::parse(s).map_err(|e| e.to_string())
}

const DEMO_CONFIG: &str = include_str!("../examples/demo.yaml");

/// mimalloc rather than glibc's malloc, chosen by measurement (bench/findings.md, "Idle
/// connections"): in one session, 26.0 against glibc's 33.6 KiB per idle HTTP/1.1 connection
/// (median of three rounds of 10,000; glibc kept what each round freed and grew from round
/// to round, jemalloc grew faster still), and 4 % fewer instructions per proxied request.
/// Arena memory is committed on demand (`.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    // The single crypto provider of the process (brief: aws-lc-rs, installed in main).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = match cli.command {
        Command::Version => {
            println!("portcullis {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => Ok(check(&config)),
        Command::Controller(options) => runtime().block_on(controller(options, cli.termination_grace_period)),
        Command::Crds => {
            print!("{}", portcullis::k8s::crd::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config, watch_interval } => {
            runtime().block_on(serve(config, watch_interval, cli.termination_grace_period))
        }
        Command::Demo { upstream } => runtime().block_on(demo(upstream)),
        Command::Tunnel(args) => runtime().block_on(tunnel(args)),
        Command::DemoUpstream { listen, name } => runtime().block_on(async move {
            let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, "demo upstream listening");
            portcullis::demo::serve(l, name).await;
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the tokio runtime")
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Applies a reloaded config, logging what is valid but probably not meant first.
fn apply_logging_warnings(proxy: &portcullis::proxy::Proxy, config: portcullis::config::Config) -> Applied {
    for w in config.warnings() {
        tracing::warn!(warning = %w, "config");
    }
    proxy.apply(config)
}

fn check(path: &std::path::Path) -> ExitCode {
    match FileSource::new(path).load() {
        Ok(loaded) => {
            println!("{}: OK ({} routes)", path.display(), loaded.config.routes.len());
            for w in loaded.config.warnings() {
                println!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: PathBuf, watch_interval: Duration, grace: Duration) -> anyhow::Result<ExitCode> {
    let source = FileSource::new(&path);
    let loaded = match source.load() {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(error = %e, "invalid config");
            }
            anyhow::bail!("{} has {} error(s); nothing was started", path.display(), errors.0.len());
        }
    };
    for w in loaded.config.warnings() {
        tracing::warn!(warning = %w, "config");
    }
    let running = server::start(loaded.config).await.context("starting listeners")?;
    let proxy = running.proxy.clone();
    let watcher = file::watch(source, loaded.inputs, loaded.fingerprint, watch_interval, move |result| match result {
        Ok(loaded) => match apply_logging_warnings(&proxy, loaded.config) {
            Applied::Swapped => tracing::info!(version = proxy.snapshot().version, "config reloaded"),
            Applied::SwappedWithListenerErrors(errors) => tracing::error!(
                version = proxy.snapshot().version,
                ?errors,
                "config reloaded, but a listener could not move to its new address; it keeps the old one"
            ),
        },
        Err(errors) => {
            proxy.reject();
            for e in &errors.0 {
                tracing::error!(error = %e, "config reload rejected; the last good config keeps serving");
            }
        }
    });
    wait_for_signal().await;
    watcher.abort();
    let drain = shutdown_drain(running.proxy.snapshot().settings.drain_timeout, grace);
    tracing::info!(drain = ?drain, "shutting down: not ready, not accepting, draining");
    let forced = running.shutdown(drain).await;
    tracing::info!(forced_closes = forced, "shutdown complete");
    Ok(ExitCode::SUCCESS)
}

async fn controller(options: portcullis::k8s::controller::Options, grace: Duration) -> anyhow::Result<ExitCode> {
    // Checked before anything else: a bad variable is the Deployment's mistake, and no
    // ProxyConfig edit could fix it.
    let overrides = portcullis::source::env::env_overrides(&|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!("invalid global settings in the environment:\n{e}"))?;
    let client =
        kube::Client::try_default().await.context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let running = std::sync::Arc::new(tokio::sync::Mutex::new(None));
    let slot = running.clone();
    let start = |config| async move {
        let r = server::start(config).await.context("starting listeners")?;
        let proxy = r.proxy.clone();
        *slot.lock().await = Some(r);
        Ok(proxy)
    };
    portcullis::k8s::controller::run(client, options, overrides, start, wait_for_signal()).await?;
    if let Some(r) = running.lock().await.take() {
        let drain = shutdown_drain(r.proxy.snapshot().settings.drain_timeout, grace);
        tracing::info!(drain = ?drain, "shutting down: not ready, not accepting, draining");
        let forced = r.shutdown(drain).await;
        tracing::info!(forced_closes = forced, "shutdown complete");
    }
    Ok(ExitCode::SUCCESS)
}

/// The shutdown drain: `drain_timeout`, cut short to end 2 s before the termination grace
/// period, which leaves time to close what is left and exit before the kubelet's SIGKILL.
fn shutdown_drain(drain_timeout: Duration, grace: Duration) -> Duration {
    drain_timeout.min(grace.saturating_sub(Duration::from_secs(2)))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn demo(upstream: SocketAddr) -> anyhow::Result<ExitCode> {
    let l = tokio::net::TcpListener::bind(upstream)
        .await
        .with_context(|| format!("binding the demo upstream on {upstream}"))?;
    tokio::spawn(portcullis::demo::serve(l, "demo-upstream"));
    let root = yaml_to_value(DEMO_CONFIG).map_err(anyhow::Error::msg)?;
    let config = parse_config(&root, &NoMaterial).map_err(|e| anyhow::anyhow!("embedded demo config: {e}"))?;
    let running = server::start(config).await.context("starting listeners")?;
    let url = format!("https://localhost:{}/hello?from=quickstart", running.main.port());
    match self_request(&url).await {
        Ok((status, body)) => {
            println!("\nGET {url} through Portcullis -> {status}\n{body}");
        }
        Err(e) => println!("self-test request failed: {e:#}"),
    }
    println!("Portcullis is serving examples/demo.yaml. Try:");
    println!("  curl -k {url}");
    println!("  curl -k https://localhost:{}/sse", running.main.port());
    println!("  curl http://localhost:{}/   (308 to https)", running.http.map_or(0, |a| a.port()));
    println!("  curl http://{}/config_dump", running.admin.map_or_else(String::new, |a| a.to_string()));
    println!("  curl http://{}/metrics", running.metrics.map_or_else(String::new, |a| a.to_string()));
    println!("Ctrl-C to stop.");
    wait_for_signal().await;
    running.shutdown(Duration::from_secs(5)).await;
    Ok(ExitCode::SUCCESS)
}

/// One real HTTPS request through the proxy, trusting whatever certificate it presents
/// (the quickstart's is self-signed).
async fn self_request(url: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let tls = portcullis::config::UpstreamTls { skip_verify: true, ..Default::default() };
    let cache = portcullis::proxy::upstream::ClientCache::default();
    let target = portcullis::config::validate::parse_upstream(&url.split('/').take(3).collect::<Vec<_>>().join("/"))
        .map_err(anyhow::Error::msg)?;
    let client = cache.get(&target, &tls, false);
    let req = http::Request::get(url).body(Empty::<bytes::Bytes>::new().map_err(|n| match n {}).boxed_unsync())?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
