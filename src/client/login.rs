//! The browser sign-in of `portcullis tunnel` and its token cache. The proxy's programmatic
//! login (docs/signin.md) runs the whole sign-in in the user's browser and ends by sending it
//! to `http://127.0.0.1:PORT/?portcullis_jwt=<token>`, where this listens; the token is
//! cached per host (0600, under the user's config directory) and reused until it expires.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::options::{Ctx, Options};

/// How long the user has to finish signing in.
const SIGN_IN_WAIT: Duration = Duration::from_secs(300);

/// The directory of cached tokens: `--token-dir`, else `$XDG_CONFIG_HOME/portcullis/tokens`,
/// else `~/.config/portcullis/tokens`.
fn token_dir(opts: &Options) -> Option<PathBuf> {
    token_dir_in(opts, std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"))
}

fn token_dir_in(
    opts: &Options,
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if let Some(d) = &opts.token_dir {
        return Some(d.clone());
    }
    // The XDG base directory spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    let base = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(PathBuf::from).filter(|p| p.is_absolute()).map(|h| h.join(".config")))?;
    Some(base.join("portcullis").join("tokens"))
}

/// The cache file of `host` (a host name is a safe file name once checked).
fn token_file(opts: &Options) -> Option<PathBuf> {
    let host = &opts.host;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        return None;
    }
    Some(token_dir(opts)?.join(host))
}

/// The `exp` of a JWT, read without verifying it (the proxy verifies; this only decides
/// whether a cached one is worth sending).
pub(crate) fn expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A cached token for the target host that has a minute left.
pub(crate) fn cached(opts: &Options) -> Option<String> {
    let text = std::fs::read_to_string(token_file(opts)?).ok()?;
    let token = text.trim().to_owned();
    (expiry(&token)? > now() + 60).then_some(token)
}

/// Removes the cached token of the target host (the proxy refused it).
pub(crate) fn forget(opts: &Options) {
    if let Some(file) = token_file(opts) {
        let _ = std::fs::remove_file(file);
    }
}

/// Writes the token to the cache, readable by the user only.
pub(crate) fn store(opts: &Options, token: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let file = token_file(opts).context("no cache directory (set HOME or XDG_CONFIG_HOME)")?;
    let dir = file.parent().context("cache directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// Signs in through the browser: prints the login URL (and tries to open it), waits for the
/// redirect with the token on a loopback port, caches the token.
pub(crate) async fn sign_in(ctx: &Ctx) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("listening on a loopback port for the sign-in")?;
    let port = listener.local_addr()?.port();
    let proxy_port = if ctx.proxy_port == 443 { String::new() } else { format!(":{}", ctx.proxy_port) };
    let url =
        format!("https://{}{proxy_port}/.portcullis/api/v1/login?redirect_uri=http://127.0.0.1:{port}/", ctx.opts.host);
    eprintln!(
        "portcullis tunnel: sign in to reach {}:{} — open this URL in a browser:\n  {url}",
        ctx.opts.host, ctx.opts.port
    );
    // Best effort: a desktop opens it; a server has no browser and the user copies the URL.
    let _ = std::process::Command::new("xdg-open")
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let token =
        tokio::time::timeout(SIGN_IN_WAIT, receive(&listener)).await.context("no sign-in within 5 minutes")??;
    match store(&ctx.opts, &token) {
        Ok(path) => eprintln!("portcullis tunnel: signed in; token cached in {}", path.display()),
        Err(e) => eprintln!("portcullis tunnel: signed in (token not cached: {e:#})"),
    }
    Ok(token)
}

const SIGNED_IN_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Signed in</title>\
<p>Signed in: portcullis tunnel has its token. You can close this tab and return to the terminal.</p>\n";

const NOT_A_SIGN_IN_PAGE: &str = "<!doctype html><meta charset=utf-8><title>portcullis tunnel</title>\
<p>This is portcullis tunnel's sign-in listener: it waits for the proxy's redirect with a token.</p>\n";

/// Accepts connections on `listener` until one brings `?portcullis_jwt=`; answers the browser.
/// Each connection is served on its own: a browser opens spare connections it may never
/// use, and one of them must not hold up the one carrying the token.
async fn receive(listener: &TcpListener) -> anyhow::Result<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let mut served = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (s, _) = accepted?;
                // Bounded: a local process opening connections in a loop gets a few at a time.
                if served.len() < 16 {
                    served.spawn(serve_one(s, tx.clone()));
                }
                while served.try_join_next().is_some() {}
            }
            Some(token) = rx.recv() => return Ok(token),
        }
    }
}

/// Reads one request head (bounded by a buffer and a timeout), answers it, and sends on
/// the token its target carries.
async fn serve_one(mut s: tokio::net::TcpStream, tx: tokio::sync::mpsc::Sender<String>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut len = 0;
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while len < buf.len() {
            let n = s.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let target = head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
    let token = target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("portcullis_jwt=")))
        .map(str::to_owned)
        .filter(|t| expiry(t).is_some());
    let (status, page) = match &token {
        Some(_) => ("200 OK", SIGNED_IN_PAGE),
        None => ("400 Bad Request", NOT_A_SIGN_IN_PAGE),
    };
    // No cache: the URL carries the token, and a browser's back button should not.
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n\
         referrer-policy: no-referrer\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.shutdown().await;
    if let Some(t) = token {
        let _ = tx.send(t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let b = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b(&serde_json::json!({"alg": "ES256"})), b(&serde_json::json!({"exp": exp, "sub": "a"})))
    }

    fn opts(dir: &std::path::Path, host: &str) -> Options {
        Options {
            host: host.into(),
            port: 22,
            listen: super::super::options::Listen::Stdio,
            proxy_url: None,
            transport: super::super::options::Transport::Auto,
            token: None,
            ca_file: None,
            insecure: false,
            client_cert: None,
            client_key: None,
            token_dir: Some(dir.join("tokens")),
            udp_idle: Duration::from_secs(60),
        }
    }

    #[test]
    fn tokens_are_cached_0600_per_host_until_they_expire() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path(), "ssh.example.com");
        assert_eq!(cached(&o), None);
        let fresh = jwt(now() + 3600);
        let path = store(&o, &fresh).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(cached(&o), Some(fresh));
        assert_eq!(cached(&opts(dir.path(), "other.example.com")), None, "per host");
        store(&o, &jwt(now() + 30)).unwrap();
        assert_eq!(cached(&o), None, "about to expire");
        assert_eq!(token_file(&opts(dir.path(), "../etc/passwd")), None, "a host is no path");
    }

    #[test]
    fn the_cache_lives_in_the_users_config_directory() {
        let mut o = opts(std::path::Path::new("/unused"), "db.example.com");
        o.token_dir = None;
        let at = |xdg: Option<&str>, home: Option<&str>| token_dir_in(&o, xdg.map(Into::into), home.map(Into::into));
        assert_eq!(at(Some("/x/cfg"), Some("/home/u")), Some(PathBuf::from("/x/cfg/portcullis/tokens")));
        assert_eq!(at(None, Some("/home/u")), Some(PathBuf::from("/home/u/.config/portcullis/tokens")));
        assert_eq!(at(Some(""), Some("/home/u")), Some(PathBuf::from("/home/u/.config/portcullis/tokens")));
        assert_eq!(at(Some("rel"), Some("/home/u")), Some(PathBuf::from("/home/u/.config/portcullis/tokens")));
        assert_eq!(at(None, None), None);
    }

    #[tokio::test]
    async fn the_loopback_listener_takes_the_token_and_answers_the_browser() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = tokio::spawn(async move { receive(&listener).await });
        let get = |target: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            answer
        };
        // A spare connection that never sends holds nothing up.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A favicon fetch, or a token that is no JWT: refused, and the listener waits on.
        assert!(get("/favicon.ico".into()).await.starts_with("HTTP/1.1 400"));
        assert!(get("/?portcullis_jwt=garbage".into()).await.starts_with("HTTP/1.1 400"));
        assert!(!waiting.is_finished());
        let token = jwt(now() + 3600);
        let answer = get(format!("/?x=1&portcullis_jwt={token}")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("You can close this tab"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("cache-control: no-store"), "{answer}");
        assert_eq!(waiting.await.unwrap().unwrap(), token);
    }

    #[test]
    fn expiry_reads_the_payload_and_refuses_garbage() {
        assert_eq!(expiry(&jwt(1234)), Some(1234));
        for bad in ["", "a.b.c", "not-a-jwt", "a.!!!.c"] {
            assert_eq!(expiry(bad), None, "{bad}");
        }
    }
}
