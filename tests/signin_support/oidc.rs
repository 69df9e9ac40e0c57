//! The OpenID Provider: `tests/oidc/provider.mjs` (node's `oidc-provider`) as a child process
//! on an ephemeral loopback port, its node modules installed once per lock file with `npm ci`
//! into `target/tools/oidc-provider/<hash of the lock>/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

pub const CLIENT_ID: &str = "portcullis";
pub const CLIENT_SECRET: &str = "portcullis-secret";

/// A user the provider knows (its login form takes `login` and `password`).
#[derive(Clone, Copy, Debug)]
pub struct User {
    pub login: &'static str,
    pub password: &'static str,
    pub sub: &'static str,
    pub email: &'static str,
    pub email_verified: Option<bool>,
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

pub const ALICE: User = User {
    login: "alice",
    password: "alice-password",
    sub: "alice",
    email: "alice@example.com",
    email_verified: Some(true),
    name: "Alice Example",
    groups: &["admins", "staff"],
};

/// The spec gives bob no `email_verified`: his ID token has none.
pub const BOB: User = User {
    login: "bob",
    password: "bob-password",
    sub: "bob",
    email: "bob@example.com",
    email_verified: None,
    name: "Bob Example",
    groups: &["staff"],
};

impl User {
    fn to_json(self) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "sub": self.sub, "email": self.email, "name": self.name, "groups": self.groups,
        });
        if let Some(v) = self.email_verified {
            claims["email_verified"] = v.into();
        }
        serde_json::json!({ "login": self.login, "password": self.password, "claims": claims })
    }
}

/// How the provider is set up. `Default` is the sign-in design's client (`portcullis` /
/// `portcullis-secret`) with no redirect URIs yet: use [`ProviderOptions::for_auth`] or set them.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Seconds; the provider's defaults (1 h, 1 h, 14 days) when `None`.
    pub id_token_ttl: Option<u64>,
    pub access_token_ttl: Option<u64>,
    pub refresh_token_ttl: Option<u64>,
    /// The provider's session (its own sign-in cookie), seconds.
    pub session_ttl: Option<u64>,
    pub users: Vec<User>,
    /// Refuse authorization requests without an S256 `code_challenge` (default true).
    pub pkce_required: bool,
    /// More clients, as oidc-provider client metadata (`client_id`, `client_secret`,
    /// `redirect_uris`, ...).
    pub extra_clients: Vec<serde_json::Value>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            id_token_ttl: None,
            access_token_ttl: None,
            refresh_token_ttl: None,
            session_ttl: None,
            users: vec![ALICE, BOB],
            pkce_required: true,
            extra_clients: Vec::new(),
        }
    }
}

impl ProviderOptions {
    /// The registration the design asks for, for the proxy's sign-in host `auth`
    /// (e.g. `https://authenticate.test:43123`): redirect URI `auth/.portcullis/callback`,
    /// post-logout redirect URI `auth/.portcullis/signed_out`.
    pub fn for_auth(auth: &str) -> Self {
        let auth = auth.trim_end_matches('/');
        Self {
            redirect_uris: vec![format!("{auth}/.portcullis/callback")],
            post_logout_redirect_uris: vec![format!("{auth}/.portcullis/signed_out")],
            ..Self::default()
        }
    }

    /// The JSON `provider.mjs` takes.
    pub fn to_json(&self) -> serde_json::Value {
        let mut clients = vec![serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
        })];
        clients.extend(self.extra_clients.iter().cloned());
        let mut ttl = serde_json::Map::new();
        for (k, v) in [
            ("IdToken", self.id_token_ttl),
            ("AccessToken", self.access_token_ttl),
            ("RefreshToken", self.refresh_token_ttl),
            ("Session", self.session_ttl),
        ] {
            if let Some(v) = v {
                ttl.insert(k.into(), v.into());
            }
        }
        serde_json::json!({
            "clients": clients,
            "users": self.users.iter().map(|u| u.to_json()).collect::<Vec<_>>(),
            "ttl": ttl,
            "pkceRequired": self.pkce_required,
        })
    }
}

/// A running provider. Dropping it kills the node process (which also exits by itself when
/// this test process dies: it watches its stdin).
pub struct OidcProvider {
    issuer: String,
    child: Child,
    _stdin: ChildStdin,
    log: Arc<Mutex<Vec<String>>>,
}

impl OidcProvider {
    /// Installs the node modules if needed, starts the provider and waits (30 s at most) for
    /// it to listen.
    pub async fn start(opts: ProviderOptions) -> Self {
        let dir = tokio::task::spawn_blocking(install).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        let script = place_script(&dir).unwrap_or_else(|e| panic!("writing provider.mjs into {}: {e}", dir.display()));
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--port", "0", "--exit-with-stdin", "--config"])
            .arg(opts.to_json().to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting node (Node.js is needed for the OpenID Provider): {e}"));
        let stdin = child.stdin.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                log2.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        let issuer = match first {
            Ok(Ok(Some(line))) if line.starts_with("ISSUER ") => line["ISSUER ".len()..].trim().to_owned(),
            other => {
                let _ = child.start_kill();
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("the OpenID Provider did not start ({other:?}); its log:\n{}", log.lock().unwrap().join("\n"))
            }
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                eprintln!("oidc-provider stdout: {line}");
            }
        });
        Self { issuer, child, _stdin: stdin, log }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash (the `iss` of its tokens).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap()
    }

    /// Its endpoints (fixed by oidc-provider's defaults; discovery at
    /// `/.well-known/openid-configuration` says the same).
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/me", self.issuer)
    }
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }
    pub fn end_session_endpoint(&self) -> String {
        format!("{}/session/end", self.issuer)
    }
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// The provider's stderr so far: one line per request (`oidc-provider: POST /token -> 200 ...`)
    /// and its warnings.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests so far were `method path...` (e.g. `("POST", "/token")`).
    pub fn requests(&self, method: &str, path_prefix: &str) -> usize {
        let prefix = format!("oidc-provider: {method} {path_prefix}");
        self.log().iter().filter(|l| l.starts_with(&prefix)).count()
    }

    /// Kills the provider (an outage) and waits for it to exit.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

const PACKAGE_JSON: &str = include_str!("../oidc/package.json");
const PACKAGE_LOCK: &str = include_str!("../oidc/package-lock.json");
const PROVIDER_MJS: &str = include_str!("../oidc/provider.mjs");

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `target/tools/oidc-provider/<16 hex of the lock's hash>/` with `node_modules` installed
/// by `npm ci`, once per process and once per lock: each install goes to a scratch directory
/// renamed into place when complete, so a concurrent or interrupted one is never taken for done.
pub fn install() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(install_uncached).clone()
}

fn install_uncached() -> Result<PathBuf, String> {
    let hash = sha256_hex(format!("{PACKAGE_JSON}\0{PACKAGE_LOCK}").as_bytes());
    let tools = super::repo_root().join("target/tools/oidc-provider");
    let dir = tools.join(&hash[..16]);
    let done = dir.join("node_modules/oidc-provider/package.json");
    if done.is_file() {
        return Ok(dir);
    }
    let scratch = tools.join(format!("{}.{}.{}.tmp", &hash[..16], std::process::id(), unique()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    std::fs::write(scratch.join("package.json"), PACKAGE_JSON).map_err(|e| e.to_string())?;
    std::fs::write(scratch.join("package-lock.json"), PACKAGE_LOCK).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    eprintln!("installing oidc-provider: npm ci in {}", scratch.display());
    let log_path = scratch.join("npm-ci.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let status = super::run_with_timeout(
        std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
            .current_dir(&scratch)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log),
        Duration::from_secs(300),
    )
    .map_err(|e| format!("npm ci for the OpenID Provider (npm is needed): {e}"))?;
    if !status.success() {
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!("npm ci in {} failed ({status}):\n{out}", scratch.display()));
    }
    eprintln!("installed oidc-provider in {:.1} s", started.elapsed().as_secs_f64());
    // Another process may have finished first: its copy is the same.
    if std::fs::rename(&scratch, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if done.is_file() {
        Ok(dir)
    } else {
        Err(format!("{} is missing after npm ci", done.display()))
    }
}

/// Writes `provider.mjs` beside the modules it imports (ESM resolves imports from the script's
/// own directory), named by its hash so concurrent starts never see a half-written file.
fn place_script(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("provider-{}.mjs", &sha256_hex(PROVIDER_MJS.as_bytes())[..16]));
    if !path.is_file() {
        let tmp = dir.join(format!("provider.{}.{}.tmp", std::process::id(), unique()));
        std::fs::write(&tmp, PROVIDER_MJS)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}
