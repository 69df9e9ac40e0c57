//! A real browser: Debian's headless Chromium driven by `chromedriver` over the W3C WebDriver
//! protocol (plain HTTP + JSON, hyper and serde_json here; no Selenium).
//!
//! `*.test` names resolve to 127.0.0.1 inside the browser and every other name except
//! `localhost` fails to resolve, so a page can reach nothing but loopback. The proxy's
//! self-signed certificate is accepted (`acceptInsecureCerts`).
//!
//! Screenshots taken with [`Browser::screenshot`] are kept in memory; if the test fails (the
//! browser is dropped while the thread panics) they are written, with the page's source and
//! URL at that moment, to `target/test-artifacts/<test name>/NN-step.png`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How long [`Browser::find`] and the `wait_*` helpers wait by default.
pub const WAIT: Duration = Duration::from_secs(10);

/// A WebDriver error: `error` is the W3C code (`no such element`, `timeout`, ...).
#[derive(Debug, Clone)]
pub struct WdError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebDriver {}: {} ({})", self.status, self.error, self.message)
    }
}

pub struct Browser {
    test_name: String,
    driver: SocketAddr,
    session: String,
    child: Child,
    /// The shell's pid, the id of the process group of chromedriver and its browsers.
    pgid: u32,
    stdin: Option<ChildStdin>,
    shots: Mutex<Vec<(String, Vec<u8>)>>,
    driver_log: Arc<Mutex<Vec<String>>>,
    closed: bool,
}

/// Installs `chromium` and `chromium-driver` with apt when `chromedriver` is not on PATH
/// (`apt-get update` first; needs root, as in CI). One install at a time across processes
/// (`flock`), once per process. Returns how long the install took (zero when none was needed).
pub fn ensure_chromium() -> Result<Duration, String> {
    static DONE: OnceLock<Result<Duration, String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if on_path("chromedriver") && (on_path("chromium") || std::path::Path::new("/usr/bin/chromium").exists()) {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        eprintln!("chromedriver is not on PATH: installing chromium and chromium-driver with apt-get");
        let script = "command -v chromedriver >/dev/null && [ -x /usr/bin/chromium ] && exit 0; \
                      apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver";
        let log_path = super::repo_root().join("target/tools/chromium-install.log");
        let _ = std::fs::create_dir_all(log_path.parent().unwrap());
        let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let status = super::run_with_timeout(
            std::process::Command::new("flock")
                .args(["/tmp/portcullis-chromium-install.lock", "sh", "-c", script])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log),
            Duration::from_secs(900),
        )
        .map_err(|e| format!("installing chromium (apt-get as root): {e}"))?;
        if !status.success() || !on_path("chromedriver") {
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "apt-get install chromium chromium-driver failed ({status}); {}:\n{}",
                log_path.display(),
                tail.join("\n")
            ));
        }
        let took = started.elapsed();
        eprintln!(
            "installed chromium and chromium-driver in {:.1} s (log: {})",
            took.as_secs_f64(),
            log_path.display()
        );
        Ok(took)
    })
    .clone()
}

fn on_path(exe: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(exe).is_file()))
}

impl Browser {
    /// Installs Chromium if needed, starts chromedriver on a free loopback port and opens a
    /// headless session. `test_name` names the artifacts directory.
    pub async fn start(test_name: &str) -> Self {
        tokio::task::spawn_blocking(ensure_chromium).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        // chromedriver in its own process group under a shell that ends the group (driver
        // and browsers) when its stdin closes, i.e. when this process is gone however it went.
        let mut child = Command::new("sh")
            .args(["-c", "chromedriver --port=0 & trap 'kill -TERM 0 2>/dev/null' EXIT; read -r _ || true"])
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting chromedriver: {e}"));
        let stdin = child.stdin.take().unwrap();
        let driver_log = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = driver_log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = stdout.next_line().await {
                driver_log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromedriver did not start:\n{}", driver_log.lock().unwrap().join("\n")));
        let log = driver_log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
        let driver = SocketAddr::from(([127, 0, 0, 1], port));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "timeouts": {"pageLoad": 20_000, "script": 10_000, "implicit": 0},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--host-resolver-rules=MAP *.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                    "--no-proxy-server",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--disable-default-apps",
                    "--disable-client-side-phishing-detection",
                    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
                    "--password-store=basic",
                    "--window-size=1200,900",
                ],
            },
        }}});
        let mut b = Self {
            test_name: test_name.to_owned(),
            driver,
            session: String::new(),
            pgid: child.id().unwrap_or(0),
            child,
            stdin: Some(stdin),
            shots: Mutex::new(Vec::new()),
            driver_log,
            closed: false,
        };
        let created = tokio::time::timeout(Duration::from_secs(60), raw(driver, "POST", "/session", Some(caps)))
            .await
            .unwrap_or_else(|_| {
                panic!("no WebDriver session within 60 s:\n{}", b.driver_log.lock().unwrap().join("\n"))
            })
            .unwrap_or_else(|e| {
                panic!("creating the WebDriver session: {e}\n{}", b.driver_log.lock().unwrap().join("\n"))
            });
        created["sessionId"].as_str().expect("sessionId").clone_into(&mut b.session);
        b
    }

    /// A session command: `path` relative to `/session/{id}`.
    pub async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let path = format!("/session/{}{path}", self.session);
        match tokio::time::timeout(Duration::from_secs(60), raw(self.driver, method, &path, body)).await {
            Ok(r) => r,
            Err(_) => Err(WdError { status: 0, error: "harness timeout".into(), message: format!("{method} {path}") }),
        }
    }

    fn expect<T>(r: Result<T, WdError>, what: &str) -> T {
        r.unwrap_or_else(|e| panic!("browser: {what}: {e}"))
    }

    /// Navigates and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        Self::expect(self.cmd("POST", "/url", Some(json!({"url": url}))).await, &format!("goto {url}"));
    }

    pub async fn url(&self) -> String {
        Self::expect(self.cmd("GET", "/url", None).await, "url").as_str().unwrap_or_default().to_owned()
    }

    pub async fn title(&self) -> String {
        Self::expect(self.cmd("GET", "/title", None).await, "title").as_str().unwrap_or_default().to_owned()
    }

    pub async fn source(&self) -> String {
        Self::expect(self.cmd("GET", "/source", None).await, "source").as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching `css` now, if any.
    pub async fn try_find(&self, css: &str) -> Option<String> {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await.ok()?;
        v.as_object()?.values().next()?.as_str().map(str::to_owned)
    }

    /// The element matching `css`, waiting up to [`WAIT`] for it; its WebDriver id.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.try_find(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "browser: no element {css:?} at {} within {WAIT:?}", self.url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clears the field matching `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        Self::expect(self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({}))).await, "clear");
        Self::expect(self.cmd("POST", &format!("/element/{e}/value"), Some(json!({"text": text}))).await, "type");
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        Self::expect(self.cmd("POST", &format!("/element/{e}/click"), Some(json!({}))).await, &format!("click {css}"));
    }

    /// The text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        Self::expect(self.cmd("GET", &format!("/element/{e}/text"), None).await, "text").as_str().unwrap_or("").into()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        Self::expect(self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args}))).await, "execute")
    }

    /// The browser's cookies for the current page (WebDriver's view: `name`, `value`,
    /// `domain`, `path`, `secure`, `httpOnly`, `sameSite`, `expiry`).
    pub async fn cookies(&self) -> Vec<Value> {
        Self::expect(self.cmd("GET", "/cookie", None).await, "cookies").as_array().cloned().unwrap_or_default()
    }

    /// Polls `check` every 100 ms until it holds or `timeout` passes (then panics naming
    /// `what`, the URL and the page).
    pub async fn wait_for<F>(&self, timeout: Duration, what: &str, mut check: F)
    where
        F: AsyncFnMut(&Browser) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self).await {
                return;
            }
            assert!(
                Instant::now() <= deadline,
                "browser: {what} not within {timeout:?}; at {}:\n{}",
                self.url().await,
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the URL contains `s`; the URL.
    pub async fn wait_url_contains(&self, s: &str, timeout: Duration) -> String {
        self.wait_for(timeout, &format!("URL containing {s:?}"), async |b: &Browser| b.url().await.contains(s)).await;
        self.url().await
    }

    /// Waits until the page's source contains `s`.
    pub async fn wait_source_contains(&self, s: &str, timeout: Duration) {
        self.wait_for(timeout, &format!("page containing {s:?}"), async |b: &Browser| b.source().await.contains(s))
            .await;
    }

    /// Takes a screenshot named `step` (kept in memory, written only if the test fails).
    pub async fn screenshot(&self, step: &str) {
        match self.cmd("GET", "/screenshot", None).await {
            Ok(v) => {
                let png = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                self.shots.lock().unwrap().push((step.to_owned(), png));
            }
            Err(e) => eprintln!("browser: screenshot {step}: {e}"),
        }
    }

    /// The screenshots so far, `(step, png)`.
    pub fn screenshots(&self) -> Vec<(String, Vec<u8>)> {
        self.shots.lock().unwrap().clone()
    }

    /// On the provider's login page: types `user` and `password`, submits, and allows the
    /// consent page if it comes; waits until the browser has left the provider.
    pub async fn sign_in_at_provider(&self, issuer: &str, user: &str, password: &str) {
        self.wait_url_contains(&format!("{issuer}/interaction/"), WAIT).await;
        self.find("form#login").await;
        self.screenshot("provider-login").await;
        self.type_into("#username", user).await;
        self.type_into("#password", password).await;
        self.click("#submit").await;
        self.wait_for(WAIT, "leaving the login page", async |b: &Browser| {
            !b.url().await.starts_with(issuer) || b.try_find("form#consent").await.is_some()
        })
        .await;
        if self.url().await.starts_with(issuer) {
            self.screenshot("provider-consent").await;
            self.click("#allow").await;
            self.wait_for(WAIT, "leaving the provider", async |b: &Browser| !b.url().await.starts_with(issuer)).await;
        }
        self.screenshot("after-provider").await;
    }

    /// On the provider's end_session page: clicks "Yes, sign me out" (when there is no session
    /// the page submits itself) and waits until the browser has left the provider.
    pub async fn confirm_provider_logout(&self, issuer: &str) {
        self.wait_for(WAIT, "the provider's logout page", async |b: &Browser| {
            let u = b.url().await;
            !u.starts_with(issuer) || b.try_find("#logout-yes").await.is_some()
        })
        .await;
        if self.url().await.starts_with(issuer) && self.try_find("#logout-yes").await.is_some() {
            self.screenshot("provider-logout").await;
            self.click("#logout-yes").await;
        }
        self.wait_for(WAIT, "leaving the provider", async |b: &Browser| !b.url().await.starts_with(issuer)).await;
        self.screenshot("after-logout").await;
    }

    /// Ends the session and chromedriver now (Drop does it too).
    pub async fn close(mut self) {
        let _ = self.cmd("DELETE", "", None).await;
        self.closed = true;
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            self.kill_group();
        }
    }

    /// Ends chromedriver's process group (the driver and the browsers it started).
    fn kill_group(&mut self) {
        if self.pgid > 1 {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", self.pgid)]).status();
        }
        let _ = self.child.start_kill();
    }

    /// Closing the shell's stdin makes it end the group; then waits for it (5 s at most)
    /// before killing the group outright.
    fn end_driver(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_group();
    }

    fn artifacts_dir(&self) -> PathBuf {
        let name: String = self
            .test_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        super::repo_root().join("target/test-artifacts").join(name)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if !self.closed {
            // The WebDriver calls are async and Drop is not: a thread of its own with its own
            // runtime, bounded in time, for the last screenshot and the session's end.
            let (driver, session) = (self.driver, self.session.clone());
            let last = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async move {
                    let mut out = None;
                    if panicking {
                        let at = |p: &str| format!("/session/{session}{p}");
                        let get = |p: String| async move {
                            tokio::time::timeout(Duration::from_secs(10), raw(driver, "GET", &p, None)).await.ok()?.ok()
                        };
                        let png = get(at("/screenshot")).await;
                        let url = get(at("/url")).await;
                        let source = get(at("/source")).await;
                        out = Some((png, url, source));
                    }
                    let path = format!("/session/{session}");
                    let _ = tokio::time::timeout(Duration::from_secs(10), raw(driver, "DELETE", &path, None)).await;
                    out
                })
            })
            .join()
            .ok()
            .flatten();
            if panicking {
                self.write_artifacts(last);
            }
        } else if panicking {
            self.write_artifacts(None);
        }
        if self.child.id().is_some() {
            self.end_driver();
        }
    }
}

type LastState = Option<(Option<Value>, Option<Value>, Option<Value>)>;

impl Browser {
    fn write_artifacts(&self, last: LastState) {
        let dir = self.artifacts_dir();
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("browser: cannot create {}: {e}", dir.display());
            return;
        }
        let mut shots = self.shots.lock().map(|s| s.clone()).unwrap_or_default();
        let mut notes = String::new();
        if let Some((png, url, source)) = last {
            if let Some(png) = png.and_then(|v| v.as_str().map(str::to_owned)) {
                shots.push((
                    "at-failure".into(),
                    base64::engine::general_purpose::STANDARD.decode(png).unwrap_or_default(),
                ));
            }
            if let Some(url) = url {
                let _ = writeln!(notes, "URL at failure: {}", url.as_str().unwrap_or_default());
            }
            if let Some(source) = source {
                let _ = std::fs::write(dir.join("at-failure.html"), source.as_str().unwrap_or_default());
            }
        }
        for (i, (step, png)) in shots.iter().enumerate() {
            let step: String =
                step.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
            let _ = std::fs::write(dir.join(format!("{:02}-{step}.png", i + 1)), png);
        }
        notes.push_str("chromedriver log:\n");
        notes.push_str(&self.driver_log.lock().map(|l| l.join("\n")).unwrap_or_default());
        let _ = std::fs::write(dir.join("notes.txt"), notes);
        eprintln!(
            "browser: {} screenshots, the page at failure and chromedriver's log are in {}",
            shots.len(),
            dir.display()
        );
    }
}

/// One WebDriver HTTP request on a fresh connection; the response's `value`.
async fn raw(driver: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
    let err = |error: String| WdError { status: 0, error, message: format!("{method} {path}") };
    let tcp = tokio::net::TcpStream::connect(driver).await.map_err(|e| err(format!("connect: {e}")))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| err(e.to_string()))?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", driver.to_string())
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| err(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| err(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| err(e.to_string()))?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(format!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))))?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if status >= 400 {
        return Err(WdError {
            status,
            error: value["error"].as_str().unwrap_or("unknown").to_owned(),
            message: value["message"].as_str().unwrap_or_default().chars().take(500).collect(),
        });
    }
    // POST /session answers {"value": {"sessionId": ..., "capabilities": ...}}.
    Ok(value)
}
