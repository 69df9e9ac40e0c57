//! The `policy` scenario: what an access policy that checks a bearer token costs a proxied
//! HTTP/1.1 request (issue 15's target: within 10 % of the same route without a policy).
//!
//! One Portcullis process serves two routes to the same upstream: `open` has no policy,
//! `bearer` admits only a verified identity (`allow: {and: [{authenticated_user: true}]}`).
//! The identity provider is the bench itself: an RS256 key made with openssl (RS256 because
//! it is what most providers sign with by default), a JWKS served over HTTP on loopback by a
//! thread of this process, and a token whose `iss`/`aud` match the config. wrk then loads
//! three endpoints in turn, run by run like every other scenario:
//!
//! - `open`, no token: what the route costs without a policy (the baseline);
//! - `open`, with the token: the same, plus forwarding the larger request head (the token
//!   goes upstream unchanged), so the two ratios separate that cost from the policy's;
//! - `bearer`, with the token: verification (cached per connection) and the decision.
//!
//! Before any load the harness checks that the policy is really enforced (the bearer route
//! answers 200 with the token, 401 without it and with a forged one), and every response
//! of every run must be a 2xx: a policy that refused, or one that checked nothing, would
//! otherwise make a fast and meaningless figure.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use super::loadgen::Tool;
use super::peers::ProxyPorts;
use super::procs::{self, Pinning, Services, TempDir};
use super::{describe_processes, Bench, Endpoint, Options, ScenarioResult, Target, Unit};

/// What the scenario needs besides wrk: openssl makes the key and signs the token.
pub const TOOLS: &[(&str, &str)] = &[("openssl", "openssl")];

/// The audience the config accepts (`idp_client_id`) and the token names.
const CLIENT_ID: &str = "bench";
/// The token's key id, as the JWKS lists it.
const KID: &str = "bench-rs256";
/// Host names of the two routes (wrk sends them as `Host`).
const OPEN_HOST: &str = "open.bench";
const BEARER_HOST: &str = "bearer.bench";

/// The scenario's figures: the three endpoints' runs, in the order of the module docs.
pub struct PolicyCost {
    pub result: ScenarioResult,
    /// The endpoints' names (`route`, or `route+token` when the token is sent), in the order
    /// of `result.targets`.
    pub labels: Vec<&'static str>,
    /// Bytes of the token (the `Authorization` value without `Bearer `).
    pub token_bytes: usize,
    /// Requests the JWKS server answered while the scenario ran: a handful (start-up and
    /// background refreshes), never one per request or per connection.
    pub jwks_fetches: usize,
}

impl PolicyCost {
    /// Median req/s of endpoint `i`.
    pub fn rps(&self, i: usize) -> f64 {
        super::report::median(self.result.targets[i].samples.iter().map(|s| s.figure))
    }

    /// Endpoint `i`'s req/s ÷ the baseline's (`open` without a token).
    pub fn ratio(&self, i: usize) -> f64 {
        self.rps(i) / self.rps(0)
    }
}

/// Runs the scenario with its own upstream, JWKS server and Portcullis process; returns its
/// figures and the processes' descriptions for the report.
pub fn run(
    opts: &Options,
    binary: &std::path::Path,
    pinning: Pinning,
    tmp: &TempDir,
) -> anyhow::Result<(PolicyCost, Vec<Value>)> {
    let provider = Provider::new(tmp)?;
    let jwks = serve_jwks(&provider)?;
    let ports = procs::distinct_ports(5)?;
    let upstream = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let proxy = ProxyPorts::from_slice(&ports[1..5]);

    let mut services = Services::default();
    let mut cmd = Pinning::command(pinning.rest, binary);
    cmd.args(["--log-level", "warn", "demo-upstream", "--listen", &upstream.to_string(), "--name", "bench"]);
    let upstream_pid = services.spawn("upstream (policy)", cmd, tmp.path("policy-upstream.log"))?;
    procs::wait_for_200(&mut services, upstream, &opts.path, "the demo upstream (policy)")?;

    let config = tmp.path("portcullis-policy.yaml");
    std::fs::write(&config, config_yaml(&proxy, upstream, &jwks.issuer))
        .context("writing the policy scenario's config")?;
    let mut cmd = Pinning::command(pinning.proxy, binary);
    cmd.args(["--log-level", "warn", "serve", "--watch-interval", "1h", "--config"]).arg(&config);
    let pid = services.spawn("portcullis (policy)", cmd, tmp.path("portcullis-policy.log"))?;
    procs::wait_for_200(&mut services, proxy.admin(), "/readyz", "Portcullis (policy)'s /readyz")?;

    let token = provider.token(&jwks.issuer)?;
    let authorization = format!("Authorization: Bearer {token}");
    enforced(proxy.main(), &opts.path, &token, &authorization).context(
        "the policy scenario's routes do not answer as they must (is bearer-token verification wired into the request path?)",
    )?;
    services.check_alive()?;

    let endpoint = |label, host: &str, token: bool| Endpoint {
        target: Target::Portcullis,
        label,
        addr: proxy.main(),
        tls: false,
        path: opts.path.clone(),
        headers: [Some(format!("Host: {host}")), token.then(|| authorization.clone())].into_iter().flatten().collect(),
        pid,
        metrics: Some(proxy.metrics()),
    };
    let endpoints = vec![
        endpoint("open", OPEN_HOST, false),
        endpoint("open+token", OPEN_HOST, true),
        endpoint("bearer+token", BEARER_HOST, true),
    ];
    let labels = endpoints.iter().map(|e| e.label).collect();
    let scenario = super::Scenario {
        name: "policy",
        title: "HTTP/1.1 keep-alive, a route without a policy vs one that requires a verified bearer token",
        tool: Tool::Wrk,
        unit: Unit::Requests,
        endpoints,
    };
    let bench = Bench {
        opts,
        pinning,
        tmp,
        upstream_pid,
        ours: services.pids(),
        oha: None,
        loadgen: std::path::PathBuf::new(),
    };
    let fetches_before = jwks.hits.load(Ordering::Relaxed);
    let result = bench.scenario(&scenario)?;
    services.check_alive()?;
    // The warm-up fails on any error; the measured runs are checked here, loudly too.
    for t in &result.targets {
        for (i, s) in t.samples.iter().enumerate() {
            ensure!(
                s.load.errors == 0 && s.load.requests > 0,
                "policy run {} against {}: {} responses, {} of them not 2xx or failed",
                i + 1,
                t.url,
                s.load.requests,
                s.load.errors
            );
        }
    }
    let cost = PolicyCost {
        result,
        labels,
        token_bytes: token.len(),
        jwks_fetches: jwks.hits.load(Ordering::Relaxed) - fetches_before,
    };
    Ok((cost, describe_processes(&services)))
}

/// The config: plain HTTP (as the `h1` scenario), the bench's JWKS as the identity
/// provider, and the two routes.
fn config_yaml(p: &ProxyPorts, upstream: SocketAddr, issuer: &str) -> String {
    format!(
        "# Generated by `cargo xtask bench` (policy scenario).\n\
         address: \"127.0.0.1:{}\"\n\
         insecure_server: true\n\
         http_redirect_address: \"127.0.0.1:{}\"\n\
         admin_address: \"127.0.0.1:{}\"\n\
         metrics_address: \"127.0.0.1:{}\"\n\
         idp_provider_url: \"{issuer}\"\n\
         jwks_url: \"{issuer}/jwks.json\"\n\
         idp_client_id: {CLIENT_ID}\n\
         routes:\n\
         \x20 - name: open\n\
         \x20   from: \"https://{OPEN_HOST}\"\n\
         \x20   to: [\"http://{upstream}\"]\n\
         \x20 - name: bearer\n\
         \x20   from: \"https://{BEARER_HOST}\"\n\
         \x20   to: [\"http://{upstream}\"]\n\
         \x20   policy:\n\
         \x20     allow: {{and: [{{authenticated_user: true}}]}}\n",
        p.address, p.http_redirect, p.admin, p.metrics
    )
}

/// Fails unless the routes answer as the measurement assumes: `open` 200 without a token,
/// `bearer` 200 with the token, and 401 with `WWW-Authenticate: Bearer` both without one
/// and with a forged one (the policy is enforced, the signature is checked).
fn enforced(addr: SocketAddr, path: &str, token: &str, authorization: &str) -> anyhow::Result<()> {
    let status = |host: &str, auth: Option<&str>| -> anyhow::Result<(u16, String)> {
        let host = format!("Host: {host}");
        let headers: Vec<&str> = [Some(host.as_str()), auth].into_iter().flatten().collect();
        procs::http_request(addr, path, &headers)
    };
    let (code, _) = status(OPEN_HOST, None)?;
    ensure!(code == 200, "the route without a policy answered {code}, not 200");
    let (code, text) = status(BEARER_HOST, Some(authorization))?;
    ensure!(
        code == 200,
        "the bearer route answered {code} to a valid token, not 200:\n{}",
        text.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    let forged = forge(token);
    for (what, auth) in [("no token", None), ("a forged token", Some(format!("Authorization: Bearer {forged}")))] {
        let (code, text) = status(BEARER_HOST, auth.as_deref())?;
        let challenged = text.lines().any(|l| l.to_ascii_lowercase().starts_with("www-authenticate: bearer"));
        ensure!(
            code == 401 && challenged,
            "the bearer route answered {code} to {what}, not 401 with WWW-Authenticate: Bearer: the policy is not enforced"
        );
    }
    Ok(())
}

/// The token with its payload's subject changed and the signature kept: must not verify.
fn forge(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    if let Some(payload) = parts.get_mut(1) {
        let claims = json!({"iss": "forged", "aud": CLIENT_ID, "sub": "admin", "exp": now() + 3600});
        *payload = base64url(claims.to_string().as_bytes());
    }
    parts.join(".")
}

/// The identity provider's signing key, made with openssl.
struct Provider {
    key: std::path::PathBuf,
    /// The RSA modulus, big-endian.
    modulus: Vec<u8>,
    dir: std::path::PathBuf,
}

impl Provider {
    fn new(tmp: &TempDir) -> anyhow::Result<Self> {
        let key = tmp.path("jwt-rs256.key");
        let key_text = key.display().to_string();
        openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &key_text])?;
        // genpkey's public exponent is 65537 (the JWK's "AQAB").
        let out = openssl(&["rsa", "-in", &key_text, "-noout", "-modulus"])?;
        let hex = String::from_utf8_lossy(&out);
        let hex = hex.trim().strip_prefix("Modulus=").context("openssl rsa -modulus printed no Modulus=")?;
        Ok(Self { key, modulus: from_hex(hex)?, dir: tmp.0.clone() })
    }

    /// The JWKS document with the one key.
    fn jwks(&self) -> String {
        json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
            "n": base64url(&self.modulus), "e": "AQAB"}]})
        .to_string()
    }

    /// A token for `issuer` and the client id, valid for a day (longer than any run).
    fn token(&self, issuer: &str) -> anyhow::Result<String> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
        let now = now();
        let claims = json!({"iss": issuer, "aud": CLIENT_ID, "sub": "bench-user", "email": "bench@example.com",
            "groups": ["bench"], "iat": now, "exp": now + 86_400});
        let input =
            format!("{}.{}", base64url(header.to_string().as_bytes()), base64url(claims.to_string().as_bytes()));
        let input_path = self.dir.join("jwt-input");
        std::fs::write(&input_path, &input)?;
        // RS256 is RSASSA-PKCS1-v1_5 over SHA-256: exactly `openssl dgst -sha256 -sign`.
        let signature =
            openssl(&["dgst", "-sha256", "-sign", &self.key.display().to_string(), &input_path.display().to_string()])?;
        ensure!(signature.len() == 256, "an RS256 signature with a 2048-bit key is 256 bytes, not {}", signature.len());
        Ok(format!("{input}.{}", base64url(&signature)))
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs openssl; its stdout.
fn openssl(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("openssl").args(args).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// The JWKS server: its issuer URL (`http://127.0.0.1:<port>`) and how many requests it has
/// answered.
struct JwksServer {
    issuer: String,
    hits: Arc<AtomicUsize>,
}

/// Serves `/jwks.json` (and the discovery document, for a provider read through discovery)
/// from a thread of this process, one connection at a time: the proxy fetches it a few
/// times per run, so there is nothing to gain from more. The thread ends with the process.
fn serve_jwks(provider: &Provider) -> anyhow::Result<JwksServer> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the JWKS server")?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let jwks = provider.jwks();
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")}).to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(&stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // The rest of the head, up to the blank line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            counter.fetch_add(1, Ordering::Relaxed);
            let path = request_line.split(' ').nth(1).unwrap_or("");
            let (status, body) = match path {
                "/jwks.json" => ("200 OK", jwks.as_str()),
                "/.well-known/openid-configuration" => ("200 OK", discovery.as_str()),
                _ => ("404 Not Found", "{}"),
            };
            let _ = write!(
                &stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(JwksServer { issuer, hits })
}

/// Base64url without padding (RFC 7515's encoding of every JWT and JWK part).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn from_hex(hex: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(hex.len().is_multiple_of(2), "odd-length hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).with_context(|| format!("{:?} is not hex", &hex[i..i + 2])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_vectors() {
        // RFC 4648's test vectors, in the URL-safe alphabet without padding.
        for (plain, encoded) in
            [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE")]
        {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(from_hex("00ffA0").unwrap(), [0, 255, 160]);
        assert!(from_hex("abc").is_err());
    }

    #[test]
    fn the_config_has_both_routes_and_the_provider() {
        let p = ProxyPorts::from_slice(&[1, 2, 3, 4]);
        let yaml = config_yaml(&p, "127.0.0.1:9".parse().unwrap(), "http://127.0.0.1:7");
        let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(v["jwks_url"], "http://127.0.0.1:7/jwks.json");
        assert_eq!(v["routes"][0]["name"], "open");
        assert!(v["routes"][0].get("policy").is_none());
        assert_eq!(v["routes"][1]["policy"]["allow"]["and"][0]["authenticated_user"], true);
    }

    #[test]
    fn a_forged_token_keeps_the_signature() {
        let forged = forge("aGVhZA.Y2xhaW1z.c2ln");
        let parts: Vec<&str> = forged.split('.').collect();
        assert_eq!((parts[0], parts[2]), ("aGVhZA", "c2ln"));
        assert_ne!(parts[1], "Y2xhaW1z");
    }
}
