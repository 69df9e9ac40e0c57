//! The `signin` scenario: what a browser session costs a proxied HTTP/1.1 request (issue
//! 16's target: at least 0.85 of the req/s of the same route without a policy).
//!
//! One Portcullis process serves two routes to the same upstream: `open` has no policy,
//! `session` admits any signed-in user (`allow_any_authenticated_user: true`) and, as every
//! route with a policy does by default, sends the upstream the identity as a signed
//! `X-Portcullis-Jwt-Assertion` (ES256). The identity provider is the real one the sign-in
//! tests use: node's `oidc-provider` (`tests/oidc/provider.mjs`, its modules installed with
//! `npm ci` into `target/tools/oidc-provider/<lock hash>/` when missing, shared with the
//! tests), on loopback. The harness signs alice in the way a browser does, over plain HTTP to
//! the proxy (`insecure_server`, as `h1` and `policy`; the sign-in's `https://` URLs are sent
//! to the proxy's plain listener with their `Host`): the route host's redirect to the
//! sign-in host, the provider's login and consent forms, the code exchange, the hand-off
//! back to the route host. The `_portcullis` cookie it ends with is what wrk sends. wrk then
//! loads three endpoints in turn, run by run like every other scenario:
//!
//! - `open`, no cookie: the route without a policy (the baseline);
//! - `open`, with the cookie: the same, plus the larger request head (the cookie goes
//!   upstream unchanged), so the two ratios separate that cost from the session's;
//! - `session`, with the cookie: the cookie opened (once per connection: the last one is
//!   cached), the policy decided on every request, the assertion set on every request
//!   (signed once a minute per connection, cached in between).
//!
//! Before any load the harness checks that the session is really required and really
//! passed on: `session` answers 200 with the cookie and the upstream received an assertion
//! naming alice for `session.bench`; without the cookie it answers 401 (a browser is sent
//! to the sign-in host with a 302); a tampered cookie gets 401. Every response of every run
//! must be a 2xx.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use super::loadgen::Tool;
use super::peers::ProxyPorts;
use super::procs::{self, Pinning, Services, TempDir};
use super::{describe_processes, Bench, Endpoint, Options, ScenarioResult, Target, Unit};
use crate::util;

/// The client the provider registers and the proxy signs in as.
const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "portcullis-secret";
/// The provider's user (`tests/oidc/provider.mjs`'s default users).
const LOGIN: &str = "alice";
const PASSWORD: &str = "alice-password";
const EMAIL: &str = "alice@example.com";
/// Host names of the two routes and of the sign-in host (wrk sends the routes' as `Host`).
const OPEN_HOST: &str = "open.bench";
const SESSION_HOST: &str = "session.bench";
const AUTH_HOST: &str = "authenticate.bench";
const COOKIE: &str = "_portcullis";
const ASSERTION: &str = "x-portcullis-jwt-assertion";
/// How long `npm ci` may take.
const NPM_TIMEOUT: Duration = Duration::from_mins(5);
/// How many redirects one step of the sign-in may follow.
const MAX_REDIRECTS: usize = 20;

/// The scenario's figures: the three endpoints' runs, in the order of the module docs.
pub struct SessionCost {
    pub result: ScenarioResult,
    /// The endpoints' names (`route`, or `route+cookie` when the cookie is sent), in the
    /// order of `result.targets`.
    pub labels: Vec<&'static str>,
    /// Bytes of the `_portcullis` cookie's value.
    pub cookie_bytes: usize,
    /// Bytes of the assertion the upstream received.
    pub assertion_bytes: usize,
    /// Requests to the provider during the sign-in, and during the runs (none expected: the
    /// session is checked without it, and its ID token outlives the runs).
    pub provider_requests_sign_in: usize,
    pub provider_requests_runs: usize,
    /// `node --version`.
    pub node: String,
}

impl SessionCost {
    /// Median req/s of endpoint `i`.
    pub fn rps(&self, i: usize) -> f64 {
        super::report::median(self.result.targets[i].samples.iter().map(|s| s.figure))
    }

    /// Endpoint `i`'s req/s ÷ the baseline's (`open` without the cookie).
    pub fn ratio(&self, i: usize) -> f64 {
        self.rps(i) / self.rps(0)
    }

    /// The median over the rounds of endpoint `i`'s req/s ÷ the baseline's in the same
    /// round (seconds apart): less moved by a neighbour's load that comes and goes than the
    /// ratio of the medians.
    pub fn round_ratio(&self, i: usize) -> f64 {
        let (base, this) = (&self.result.targets[0].samples, &self.result.targets[i].samples);
        super::report::median(base.iter().zip(this).map(|(b, t)| t.figure / b.figure))
    }
}

/// Runs the scenario with its own upstream, provider and Portcullis process; returns its
/// figures and the processes' descriptions for the report.
pub fn run(
    opts: &Options,
    binary: &Path,
    pinning: Pinning,
    tmp: &TempDir,
) -> anyhow::Result<(SessionCost, Vec<Value>)> {
    let node = command_line("node", &["--version"]).context("Node.js (`node`) is needed for the OpenID Provider")?;
    let provider_dir = install_provider()?;
    let ports = procs::distinct_ports(6)?;
    let upstream = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let provider_addr = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let proxy = ProxyPorts::from_slice(&ports[2..6]);
    let auth = format!("https://{AUTH_HOST}:{}", proxy.address);
    let issuer = format!("http://{provider_addr}");

    let mut services = Services::default();
    // The provider works only during the sign-in; beside the upstream, it takes nothing
    // from the proxy's CPU.
    let script = place_script(&provider_dir)?;
    let mut cmd = Pinning::command(pinning.rest, "node");
    cmd.arg(&script).args(["--port", &provider_addr.port().to_string(), "--config"]);
    cmd.arg(provider_config(&auth).to_string()).current_dir(&provider_dir);
    services.spawn("oidc-provider (signin)", cmd, tmp.path("signin-provider.log"))?;
    procs::wait_for_200(
        &mut services,
        provider_addr,
        "/.well-known/openid-configuration",
        "the OpenID Provider (node oidc-provider)",
    )?;

    let mut cmd = Pinning::command(pinning.rest, binary);
    cmd.args(["--log-level", "warn", "demo-upstream", "--listen", &upstream.to_string(), "--name", "bench"]);
    let upstream_pid = services.spawn("upstream (signin)", cmd, tmp.path("signin-upstream.log"))?;
    procs::wait_for_200(&mut services, upstream, &opts.path, "the demo upstream (signin)")?;

    let config = tmp.path("portcullis-signin.yaml");
    std::fs::write(&config, config_yaml(&proxy, upstream, &issuer, &auth, &cookie_secret()?))
        .context("writing the signin scenario's config")?;
    let mut cmd = Pinning::command(pinning.proxy, binary);
    cmd.args(["--log-level", "warn", "serve", "--watch-interval", "1h", "--config"]).arg(&config);
    let pid = services.spawn("portcullis (signin)", cmd, tmp.path("portcullis-signin.log"))?;
    procs::wait_for_200(&mut services, proxy.admin(), "/readyz", "Portcullis (signin)'s /readyz")?;

    let provider_log = tmp.path("signin-provider.log");
    let mut browser = Browser::new(proxy.main());
    let cookie = browser
        .sign_in(&format!("https://{SESSION_HOST}:{}/", proxy.address), &issuer)
        .context("signing alice in through Portcullis and the provider")?;
    let provider_requests_sign_in = provider_requests(&provider_log);
    let assertion = enforced(proxy.main(), &cookie).context(
        "the signin scenario's routes do not answer as they must (is the session checked and the assertion set?)",
    )?;
    services.check_alive()?;

    let cookie_header = format!("Cookie: {COOKIE}={cookie}");
    let endpoint = |label, host: &str, cookie: bool| Endpoint {
        target: Target::Portcullis,
        label,
        addr: proxy.main(),
        tls: false,
        path: opts.path.clone(),
        headers: [Some(format!("Host: {host}")), cookie.then(|| cookie_header.clone())].into_iter().flatten().collect(),
        pid,
        metrics: Some(proxy.metrics()),
    };
    let endpoints = vec![
        endpoint("open", OPEN_HOST, false),
        endpoint("open+cookie", OPEN_HOST, true),
        endpoint("session+cookie", SESSION_HOST, true),
    ];
    let labels = endpoints.iter().map(|e| e.label).collect();
    let scenario = super::Scenario {
        name: "signin",
        title: "HTTP/1.1 keep-alive, a route without a policy vs one that requires a signed-in session cookie and sends an identity assertion",
        tool: Tool::Wrk,
        unit: Unit::Requests,
        endpoints,
    };
    let bench = Bench { opts, pinning, tmp, upstream_pid, ours: services.pids(), oha: None, loadgen: PathBuf::new() };
    let before = provider_requests(&provider_log);
    let result = bench.scenario(&scenario)?;
    services.check_alive()?;
    let provider_requests_runs = provider_requests(&provider_log) - before;
    // The warm-up fails on any error; the measured runs are checked here, loudly too.
    for t in &result.targets {
        for (i, s) in t.samples.iter().enumerate() {
            ensure!(
                s.load.errors == 0 && s.load.requests > 0,
                "signin run {} against {}: {} responses, {} of them not 2xx or failed",
                i + 1,
                t.url,
                s.load.requests,
                s.load.errors
            );
        }
    }
    // Still signed in after the load (nothing expired or was revoked under it).
    let (code, _) = get(proxy.main(), "/", &[&format!("Host: {SESSION_HOST}"), &cookie_header])?;
    ensure!(code == 200, "after the runs the session route answered {code} to the cookie, not 200");
    let cost = SessionCost {
        result,
        labels,
        cookie_bytes: cookie.len(),
        assertion_bytes: assertion.len(),
        provider_requests_sign_in,
        provider_requests_runs,
        node,
    };
    Ok((cost, describe_processes(&services)))
}

/// The config: plain HTTP (as the `h1` scenario), the provider with the sign-in client, the
/// sign-in host, and the two routes.
fn config_yaml(p: &ProxyPorts, upstream: SocketAddr, issuer: &str, auth: &str, cookie_secret: &str) -> String {
    format!(
        "# Generated by `cargo xtask bench` (signin scenario).\n\
         address: \"127.0.0.1:{}\"\n\
         insecure_server: true\n\
         http_redirect_address: \"127.0.0.1:{}\"\n\
         admin_address: \"127.0.0.1:{}\"\n\
         metrics_address: \"127.0.0.1:{}\"\n\
         idp_provider_url: \"{issuer}\"\n\
         idp_client_id: {CLIENT_ID}\n\
         idp_client_secret: {CLIENT_SECRET}\n\
         authenticate_service_url: \"{auth}\"\n\
         cookie_secret: \"{cookie_secret}\"\n\
         routes:\n\
         \x20 - name: open\n\
         \x20   from: \"https://{OPEN_HOST}\"\n\
         \x20   to: [\"http://{upstream}\"]\n\
         \x20 - name: session\n\
         \x20   from: \"https://{SESSION_HOST}\"\n\
         \x20   to: [\"http://{upstream}\"]\n\
         \x20   allow_any_authenticated_user: true\n",
        p.address, p.http_redirect, p.admin, p.metrics
    )
}

/// The provider's client registration: the sign-in host's callback and signed-out page.
fn provider_config(auth: &str) -> Value {
    json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("{auth}/.portcullis/callback")],
            "post_logout_redirect_uris": [format!("{auth}/.portcullis/signed_out")],
        }],
    })
}

/// 32 random bytes, base64 (what `head -c32 /dev/urandom | base64` makes).
fn cookie_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    Ok(base64(&bytes, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true))
}

/// Fails unless the routes answer as the measurement assumes; the assertion the upstream
/// received.
fn enforced(addr: SocketAddr, cookie: &str) -> anyhow::Result<String> {
    let with_cookie = format!("Cookie: {COOKIE}={cookie}");
    let session = format!("Host: {SESSION_HOST}");
    let open = format!("Host: {OPEN_HOST}");
    let (code, _) = get(addr, "/", &[&open])?;
    ensure!(code == 200, "the route without a policy answered {code}, not 200");

    // The demo upstream answers any other path with the request it received, as JSON.
    let (code, text) = get(addr, "/headers", &[&session, &with_cookie])?;
    ensure!(code == 200, "the session route answered {code} to the session cookie, not 200:\n{}", head_of(&text));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let doc: Value = serde_json::from_str(body)
        .with_context(|| format!("the session route's answer is not the upstream's JSON:\n{}", head_of(&text)))?;
    let assertion = doc["headers"][ASSERTION]
        .as_str()
        .context("the upstream received no X-Portcullis-Jwt-Assertion through the session route")?
        .to_owned();
    let parts: Vec<&str> = assertion.split('.').collect();
    ensure!(parts.len() == 3, "the assertion is not a JWT: {assertion:?}");
    let header: Value = serde_json::from_slice(&base64url_decode(parts[0])?).context("the assertion's header")?;
    let claims: Value = serde_json::from_slice(&base64url_decode(parts[1])?).context("the assertion's claims")?;
    ensure!(header["alg"] == "ES256", "the assertion is signed with {}, not ES256", header["alg"]);
    ensure!(
        claims["email"] == EMAIL && claims["aud"] == SESSION_HOST,
        "the assertion does not name {EMAIL} for {SESSION_HOST}: {claims}"
    );

    let (code, _) = get(addr, "/", &[&session])?;
    ensure!(code == 401, "the session route answered {code} without a cookie, not 401: the policy is not enforced");
    let (code, text) = get(addr, "/", &[&session, "Accept: text/html"])?;
    let location = header_values(&text, "location").into_iter().next().unwrap_or_default();
    ensure!(
        code == 302 && location.starts_with(&format!("https://{AUTH_HOST}:")),
        "a browser without a cookie got {code} (Location {location:?}), not a 302 to the sign-in host"
    );
    let tampered = tamper(cookie);
    let (code, _) = get(addr, "/", &[&session, &format!("Cookie: {COOKIE}={tampered}")])?;
    ensure!(code == 401, "the session route answered {code} to a tampered cookie, not 401");
    Ok(assertion)
}

/// The cookie with one character in its middle changed: must not open.
fn tamper(cookie: &str) -> String {
    let mut bytes = cookie.as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap_or_default()
}

fn head_of(text: &str) -> String {
    text.lines().take(12).collect::<Vec<_>>().join("\n")
}

/// A GET to the proxy with `Connection: close`.
fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> anyhow::Result<(u16, String)> {
    procs::http_request(addr, path, headers)
}

/// The lines the provider logged for requests so far (`oidc-provider: METHOD /path -> ...`).
fn provider_requests(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|l| l.starts_with("oidc-provider: ") && l.contains(" -> ")).count()
}

// ---------------------------------------------------------------------------------------
// The provider's installation: the same directory as the sign-in tests'
// (`tests/signin_support/oidc.rs`).

/// `target/tools/oidc-provider/<16 hex of the hash of package.json, NUL, package-lock.json>/`
/// with `node_modules` installed by `npm ci` (into a scratch directory renamed into place
/// when complete, so an interrupted install is never taken for done).
pub(crate) fn install_provider() -> anyhow::Result<PathBuf> {
    let src = util::root().join("tests/oidc");
    let package = std::fs::read(src.join("package.json")).context("reading tests/oidc/package.json")?;
    let lock = std::fs::read(src.join("package-lock.json")).context("reading tests/oidc/package-lock.json")?;
    let mut keyed = package.clone();
    keyed.push(0);
    keyed.extend_from_slice(&lock);
    let hash = sha256_hex(&keyed)?;
    let tools = util::root().join("target/tools/oidc-provider");
    let dir = tools.join(&hash[..16]);
    if dir.join("node_modules/oidc-provider/package.json").is_file() {
        return Ok(dir);
    }
    command_line("npm", &["--version"]).context("npm is needed to install the OpenID Provider (oidc-provider)")?;
    let scratch = tools.join(format!("{}.{}.bench.tmp", &hash[..16], std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    std::fs::write(scratch.join("package.json"), &package)?;
    std::fs::write(scratch.join("package-lock.json"), &lock)?;
    eprintln!("\n==> bench: installing oidc-provider: npm ci in {}", scratch.display());
    let started = Instant::now();
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]).current_dir(&scratch);
    super::run_bounded(cmd, NPM_TIMEOUT, &scratch.join("npm-ci.log")).context("npm ci for the OpenID Provider")?;
    eprintln!("    installed in {:.1} s", started.elapsed().as_secs_f64());
    // A concurrent install (a test) may have finished first: its copy is the same.
    if std::fs::rename(&scratch, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    ensure!(
        dir.join("node_modules/oidc-provider/package.json").is_file(),
        "{} has no node_modules/oidc-provider after npm ci",
        dir.display()
    );
    Ok(dir)
}

/// Writes `provider.mjs` beside the modules it imports (ESM resolves imports from the
/// script's directory), named by its hash as the tests name it.
fn place_script(dir: &Path) -> anyhow::Result<PathBuf> {
    let script =
        std::fs::read(util::root().join("tests/oidc/provider.mjs")).context("reading tests/oidc/provider.mjs")?;
    let path = dir.join(format!("provider-{}.mjs", &sha256_hex(&script)?[..16]));
    if !path.is_file() {
        let tmp = dir.join(format!("provider.{}.bench.tmp", std::process::id()));
        std::fs::write(&tmp, &script)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// SHA-256 in hex, by coreutils' `sha256sum`.
fn sha256_hex(data: &[u8]) -> anyhow::Result<String> {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("running sha256sum")?;
    child.stdin.take().context("sha256sum's stdin")?.write_all(data)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "sha256sum failed ({})", out.status);
    let hex: String = String::from_utf8_lossy(&out.stdout).chars().take_while(char::is_ascii_hexdigit).collect();
    ensure!(hex.len() == 64, "sha256sum printed no hash");
    Ok(hex)
}

/// A program's first line of output.
fn command_line(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    ensure!(out.status.success(), "{program} {} failed ({})", args.join(" "), out.status);
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned())
}

// ---------------------------------------------------------------------------------------
// A scripted browser: HTTP/1.1 with `Connection: close`, a cookie jar, redirects followed.
// `https://*.bench` URLs go to the proxy's plain listener (it answers by `Host`), others
// (the provider's) to their loopback address.

struct Cookie {
    host: String,
    name: String,
    value: String,
    path: String,
}

struct Page {
    url: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn location(&self) -> Option<String> {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
            .then(|| self.header("location").map(|l| resolve(&self.url, l)))?
    }
}

impl std::fmt::Display for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.url, self.status)?;
        if let Some(l) = self.header("location") {
            write!(f, " (Location: {})", l.chars().take(160).collect::<String>())?;
        }
        Ok(())
    }
}

struct Browser {
    proxy: SocketAddr,
    jar: Vec<Cookie>,
    /// Every request so far, for error messages.
    hops: Vec<String>,
}

impl Browser {
    fn new(proxy: SocketAddr) -> Self {
        Self { proxy, jar: Vec::new(), hops: Vec::new() }
    }

    /// Opens `start` (a URL of the session route) without a session, signs in at the
    /// provider (login form, then consent), and follows the redirects back; the session
    /// cookie the route host set.
    fn sign_in(&mut self, start: &str, issuer: &str) -> anyhow::Result<String> {
        let result = self.sign_in_steps(start, issuer);
        result.with_context(|| format!("the requests:\n  {}", self.hops.join("\n  ")))
    }

    fn sign_in_steps(&mut self, start: &str, issuer: &str) -> anyhow::Result<String> {
        let first = self.request("GET", start, None)?;
        ensure!(
            first.location().is_some_and(|l| l.starts_with(&format!("https://{AUTH_HOST}:"))),
            "the session route did not send a browser to the sign-in host"
        );
        let mut page = self.follow(first)?;
        ensure!(
            page.url.starts_with(issuer) && page.status == 200,
            "the sign-in did not reach the provider's login page"
        );
        let (action, mut fields) =
            form(&page.body, "/login").context("no login form (action …/login) on the provider's page")?;
        fields.push(("login".into(), LOGIN.into()));
        fields.push(("password".into(), PASSWORD.into()));
        let submitted = self.request("POST", &resolve(&page.url, &action), Some(&form_encode(&fields)))?;
        page = self.follow(submitted)?;
        // The consent page (the proxy asks for `offline_access`, so `prompt=consent`).
        for _ in 0..3 {
            if !(page.url.starts_with(issuer) && page.status == 200) {
                break;
            }
            let Some((action, mut fields)) = form(&page.body, "/confirm") else { break };
            fields.push(("consent".into(), "yes".into()));
            let submitted = self.request("POST", &resolve(&page.url, &action), Some(&form_encode(&fields)))?;
            page = self.follow(submitted)?;
        }
        ensure!(page.status == 200 && page.url == start, "the sign-in did not end on {start} with 200");
        let host = authority(start).split(':').next().unwrap_or("").to_owned();
        let cookie = self
            .jar
            .iter()
            .find(|c| c.name == COOKIE && c.host == host)
            .with_context(|| format!("no {COOKIE} cookie for {host} after the sign-in"))?;
        Ok(cookie.value.clone())
    }

    /// Follows `page`'s redirects (every one a GET: the flow has 302s and 303s only).
    fn follow(&mut self, mut page: Page) -> anyhow::Result<Page> {
        for _ in 0..MAX_REDIRECTS {
            let Some(next) = page.location() else { return Ok(page) };
            page = self.request("GET", &next, None)?;
        }
        bail!("more than {MAX_REDIRECTS} redirects")
    }

    fn request(&mut self, method: &str, url: &str, form: Option<&str>) -> anyhow::Result<Page> {
        let (https, authority, path) = split_url(url).with_context(|| format!("not a URL: {url}"))?;
        let host = authority.split(':').next().unwrap_or("").to_ascii_lowercase();
        let addr = if https && host.rsplit('.').next() == Some("bench") {
            self.proxy
        } else {
            let addr: SocketAddr = authority.parse().with_context(|| format!("not a loopback address: {url}"))?;
            ensure!(!https && addr.ip().is_loopback(), "the bench talks to loopback only: {url}");
            addr
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
        head.push_str("Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\nUser-Agent: portcullis-bench\r\n");
        let cookies = self.cookie_header(&host, &path);
        if !cookies.is_empty() {
            let _ = write!(head, "Cookie: {cookies}\r\n");
        }
        if let Some(body) = form {
            head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        head.push_str("Connection: close\r\n\r\n");
        head.push_str(form.unwrap_or(""));
        let raw = exchange(addr, head.as_bytes()).with_context(|| format!("{method} {url}"))?;
        let page = parse_response(url, &raw).with_context(|| format!("{method} {url}"))?;
        for (k, v) in &page.headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                self.store(&host, &path, v);
            }
        }
        self.hops.push(format!("{method} {page}"));
        Ok(page)
    }

    fn cookie_header(&self, host: &str, path: &str) -> String {
        let path = path.split('?').next().unwrap_or("/");
        let mut matching: Vec<&Cookie> =
            self.jar.iter().filter(|c| c.host == host && path_matches(&c.path, path)).collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching.iter().map(|c| format!("{}={}", c.name, c.value)).collect::<Vec<_>>().join("; ")
    }

    /// Stores a `Set-Cookie` (host-only: neither the proxy nor the provider sets `Domain`);
    /// `Max-Age=0` or an `Expires` in the past deletes.
    fn store(&mut self, host: &str, request_path: &str, header: &str) {
        let mut parts = header.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else { return };
        let (name, value) = (name.trim().to_owned(), value.trim().trim_matches('"').to_owned());
        let request_path = request_path.split('?').next().unwrap_or("/");
        let mut path = match request_path.rfind('/') {
            Some(0) | None => "/".to_owned(),
            Some(p) => request_path[..p].to_owned(),
        };
        let mut delete = false;
        for attr in parts {
            let (k, v) = attr.split_once('=').map_or((attr.trim(), ""), |(k, v)| (k.trim(), v.trim()));
            match k.to_ascii_lowercase().as_str() {
                "path" if v.starts_with('/') => v.clone_into(&mut path),
                "max-age" => delete |= v.parse::<i64>().is_ok_and(|s| s <= 0),
                "expires" => delete |= v.contains("1970"),
                _ => {}
            }
        }
        self.jar.retain(|c| !(c.host == host && c.name == name && c.path == path));
        if !delete {
            self.jar.push(Cookie { host: host.to_owned(), name, value, path });
        }
    }
}

fn path_matches(cookie_path: &str, path: &str) -> bool {
    path == cookie_path
        || (path.starts_with(cookie_path) && (cookie_path.ends_with('/') || path[cookie_path.len()..].starts_with('/')))
}

/// Sends `request` and reads the whole response (the server closes: `Connection: close`).
fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw)?;
    Ok(raw)
}

fn parse_response(url: &str, raw: &[u8]) -> anyhow::Result<Page> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no complete response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok());
    let status = status.with_context(|| format!("not an HTTP response: {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(Page { url: url.to_owned(), status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("a truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size, "a truncated chunk");
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// `(https, authority, path and query)` of an absolute http(s) URL.
fn split_url(url: &str) -> Option<(bool, String, String)> {
    let (https, rest) = match url.split_once("://")? {
        ("https", rest) => (true, rest),
        ("http", rest) => (false, rest),
        _ => return None,
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    Some((https, authority.to_owned(), path.to_owned()))
}

fn authority(url: &str) -> String {
    split_url(url).map(|(_, a, _)| a).unwrap_or_default()
}

/// `location` resolved against `base`: absolute URLs as they are, absolute paths on
/// `base`'s origin (the flow has no other kind).
fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base.find("://").map_or(0, |i| i + 3);
    let origin = base[origin_end..].find('/').map_or(base, |i| &base[..origin_end + i]);
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let dir =
            base.rfind('/').filter(|&i| i >= origin.len()).map_or(origin.to_owned() + "/", |i| base[..=i].to_owned());
        format!("{dir}{location}")
    }
}

/// The first `<form>` whose action ends with `suffix` (before any query): its action and
/// its hidden fields, entities decoded.
fn form(html: &str, suffix: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut rest = html;
    while let Some(start) = rest.find("<form") {
        let after = &rest[start..];
        let end = after.find("</form>").unwrap_or(after.len());
        let form = &after[..end];
        let tag = &form[..form.find('>').unwrap_or(form.len())];
        let action = attr(tag, "action").unwrap_or_default();
        if action.split('?').next().unwrap_or("").ends_with(suffix) {
            let fields = form
                .split("<input")
                .skip(1)
                .map(|i| &i[..i.find('>').unwrap_or(i.len())])
                .filter(|i| attr(i, "type").is_some_and(|t| t.eq_ignore_ascii_case("hidden")))
                .filter_map(|i| Some((attr(i, "name")?, attr(i, "value").unwrap_or_default())))
                .collect();
            return Some((action, fields));
        }
        rest = &after[end..];
    }
    None
}

/// Attribute `name` of a tag's text (`name="value"`), entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(decode_entities(&tag[start..start + len]))
}

/// `&#NN;`, `&#xNN;` and the named entities an attribute may hold.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        if let Some(c) = c {
            out.push(c);
            rest = &rest[end + 1..];
        } else {
            out.push('&');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `application/x-www-form-urlencoded`.
fn form_encode(fields: &[(String, String)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// The values of header `name` in a raw response.
fn header_values(raw: &str, name: &str) -> Vec<String> {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn base64url_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => bail!("{:?} is not base64url", char::from(c)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_both_routes_and_the_sign_in() {
        let p = ProxyPorts::from_slice(&[1, 2, 3, 4]);
        let yaml = config_yaml(
            &p,
            "127.0.0.1:9".parse().unwrap(),
            "http://127.0.0.1:7",
            "https://authenticate.bench:1",
            "c2VjcmV0",
        );
        let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(v["idp_client_secret"], CLIENT_SECRET);
        assert_eq!(v["authenticate_service_url"], "https://authenticate.bench:1");
        assert_eq!(v["routes"][0]["name"], "open");
        assert!(v["routes"][0].get("allow_any_authenticated_user").is_none());
        assert_eq!(v["routes"][1]["allow_any_authenticated_user"], true);
        let c = provider_config("https://authenticate.bench:1");
        assert_eq!(c["clients"][0]["redirect_uris"][0], "https://authenticate.bench:1/.portcullis/callback");
    }

    #[test]
    fn forms_urls_and_encodings() {
        let page = r#"<form id="login" method="post" action="/interaction/a&#45;b/login" autocomplete="off">
  <input type="hidden" name="uid" value="a&#45;b">
  <label>Login <input id="username" type="text" name="login" required></label>
</form>"#;
        let (action, fields) = form(page, "/login").unwrap();
        assert_eq!(action, "/interaction/a-b/login");
        assert_eq!(fields, vec![("uid".to_owned(), "a-b".to_owned())]);
        assert!(form(page, "/confirm").is_none());
        assert_eq!(resolve("http://127.0.0.1:5/auth?x=1", "/interaction/u"), "http://127.0.0.1:5/interaction/u");
        assert_eq!(resolve("http://127.0.0.1:5/a/b", "https://x.bench:1/c"), "https://x.bench:1/c");
        assert_eq!(
            split_url("https://session.bench:8/p?q").unwrap(),
            (true, "session.bench:8".to_owned(), "/p?q".to_owned())
        );
        assert_eq!(form_encode(&[("a b".into(), "x&y=z".into())]), "a+b=x%26y%3Dz");
        assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64(b"fo", b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true), "Zm8=");
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(path_matches("/.portcullis/", "/.portcullis/callback") && !path_matches("/a", "/ab"));
    }

    #[test]
    fn the_jar_keeps_paths_and_deletes() {
        let mut b = Browser::new("127.0.0.1:1".parse().unwrap());
        b.store("h.bench", "/", "_portcullis_csrf=x; Path=/.portcullis/; Max-Age=600; Secure");
        b.store("h.bench", "/", "_portcullis=s; Path=/; Secure; HttpOnly");
        assert_eq!(b.cookie_header("h.bench", "/.portcullis/callback?handoff=1"), "_portcullis_csrf=x; _portcullis=s");
        assert_eq!(b.cookie_header("h.bench", "/"), "_portcullis=s");
        assert_eq!(b.cookie_header("other.bench", "/"), "");
        b.store("h.bench", "/", "_portcullis_csrf=; Path=/.portcullis/; Max-Age=0");
        assert_eq!(b.cookie_header("h.bench", "/.portcullis/x"), "_portcullis=s");
        b.store("127.0.0.1", "/auth", "_i=v; path=/interaction/u; expires=Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(b.cookie_header("127.0.0.1", "/interaction/u"), "");
    }
}
