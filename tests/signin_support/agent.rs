//! A scripted user agent: HTTP/1.1 over hyper (TLS by rustls for `https://`), a cookie jar
//! after RFC 6265 (host-only and domain cookies, paths, `Secure`, `Max-Age`, `Expires`), and
//! redirects followed only when asked, every hop kept.
//!
//! It talks to loopback only: `https://` and `http://` URLs whose host is `*.test`,
//! `localhost` or a 127.x address go to 127.0.0.1 (or that address) at the URL's port, with
//! TLS SNI = the host; any other host panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::html::{self, Form};

/// One request and its response, read to the end.
#[derive(Clone, Debug)]
pub struct Hop {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    /// What the request sent: `(content-type, body)`, kept so a 307/308 can repeat it.
    pub sent: Option<(String, Vec<u8>)>,
}

impl Hop {
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308) && self.headers.contains_key(http::header::LOCATION)
    }

    /// The `Location` header resolved against this hop's URL.
    pub fn location(&self) -> Option<String> {
        self.header("location").map(|l| html::resolve(&self.url, l))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }

    /// The `Set-Cookie` headers, raw.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.header_all("set-cookie")
    }

    /// The raw `Set-Cookie` header that sets `name`, if any.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies().into_iter().find(|c| c.split('=').next().map(str::trim) == Some(name))
    }

    /// Query parameter `name` of this hop's URL.
    pub fn query(&self, name: &str) -> Option<String> {
        html::query_param(&self.url, name)
    }

    /// Query parameter `name` of the redirect target.
    pub fn location_query(&self, name: &str) -> Option<String> {
        self.location().and_then(|l| html::query_param(&l, name))
    }

    pub fn forms(&self) -> Vec<Form> {
        html::forms(&self.body)
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{self}: body is not JSON ({e}): {}", self.body))
    }

    /// `scheme://host:port` of this hop.
    pub fn origin(&self) -> &str {
        html::origin(&self.url)
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.method, self.url, self.status)?;
        if let Some(l) = self.header("location") {
            write!(f, " (Location: {l})")?;
        }
        Ok(())
    }
}

/// The hops one per line, for assertion messages.
pub fn describe(hops: &[Hop]) -> String {
    hops.iter().map(|h| format!("  {h}")).collect::<Vec<_>>().join("\n")
}

/// One stored cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    /// The host that set it (host-only) or its `Domain` attribute without the leading dot.
    pub domain: String,
    pub host_only: bool,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<String>,
    /// `None`: a session cookie.
    pub expires: Option<SystemTime>,
    /// The `Set-Cookie` header it came from (empty when set by hand).
    pub raw: String,
}

impl Cookie {
    fn domain_matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if self.host_only {
            host == self.domain
        } else {
            host == self.domain || host.ends_with(&format!(".{}", self.domain))
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        path == self.path
            || (path.starts_with(&self.path) && (self.path.ends_with('/') || path[self.path.len()..].starts_with('/')))
    }

    fn expired(&self) -> bool {
        self.expires.is_some_and(|e| e <= SystemTime::now())
    }
}

/// The parts of a URL the agent needs.
struct Target {
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
    addr: SocketAddr,
}

fn target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("not an http(s) URL: {url}")),
    };
    let authority = uri.authority().ok_or_else(|| format!("no host in {url}"))?.as_str().to_owned();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tld = host.rsplit('.').next().unwrap_or_default();
    let ip = if host == "localhost" || tld == "test" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        match host.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => ip,
            _ => return Err(format!("the test agent talks to loopback only (*.test, localhost, 127.x): {url}")),
        }
    };
    let path_and_query = uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Ok(Target { https, host, port, authority, path_and_query, addr: SocketAddr::new(ip, port) })
}

/// Accepts any server certificate (the proxy's is self-signed in tests) but still checks the
/// handshake signatures, so the TLS is real.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The scripted user agent. Fields are public so a test can adjust them.
pub struct Agent {
    pub jar: Vec<Cookie>,
    /// Sent with every request unless the request names the same header; by default a
    /// browser's `Accept: text/html,...` and a `User-Agent`.
    pub headers: Vec<(String, String)>,
    /// For one whole request (connect, TLS, response body).
    pub timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent {
    /// Accepts any server certificate.
    pub fn new() -> Self {
        let p = provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(p)))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::with_tls(tls)
    }

    /// Verifies server certificates against `roots` (names included).
    pub fn with_roots(roots: &[CertificateDer<'static>]) -> Self {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::with_tls(tls)
    }

    /// With a TLS configuration of the caller's (a client certificate, say).
    pub fn with_tls(tls: rustls::ClientConfig) -> Self {
        Self {
            jar: Vec::new(),
            headers: vec![
                ("accept".into(), "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into()),
                ("user-agent".into(), "portcullis-test-agent".into()),
            ],
            timeout: Duration::from_secs(15),
            tls: Arc::new(tls),
        }
    }

    pub async fn get(&mut self, url: &str) -> Hop {
        self.request("GET", url, &[], None).await
    }

    /// `POST` of `fields` as `application/x-www-form-urlencoded`.
    pub async fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Hop {
        let body = html::form_encode(fields).into_bytes();
        self.request("POST", url, &[("content-type", "application/x-www-form-urlencoded")], Some(body)).await
    }

    /// One request; panics when it cannot be made (see [`Agent::try_request`]).
    pub async fn request(&mut self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Hop {
        self.try_request(method, url, headers, body).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// One request: cookies from the jar added, `Set-Cookie`s stored, nothing followed.
    pub async fn try_request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Hop, String> {
        let t = target(url)?;
        let mut req = http::Request::builder().method(method).uri(&t.path_and_query).header("host", &t.authority);
        for (k, v) in &self.headers {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let cookies = self.cookie_header(url);
        if !cookies.is_empty() && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("cookie")) {
            req = req.header("cookie", cookies);
        }
        let sent = body.as_ref().map(|b| {
            let ct = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")).map_or("", |(_, v)| *v);
            (ct.to_owned(), b.clone())
        });
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
        let (status, resp_headers, resp_body) = tokio::time::timeout(self.timeout, self.send(&t, req))
            .await
            .map_err(|_| format!("no complete response within {:?}", self.timeout))??;
        for sc in resp_headers.get_all(http::header::SET_COOKIE) {
            if let Ok(sc) = sc.to_str() {
                self.store_set_cookie(url, sc);
            }
        }
        Ok(Hop {
            method: method.to_owned(),
            url: url.to_owned(),
            status,
            headers: resp_headers,
            body: String::from_utf8_lossy(&resp_body).into_owned(),
            sent,
        })
    }

    async fn send(&self, t: &Target, req: http::Request<Full<Bytes>>) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let tcp = TcpStream::connect(t.addr).await.map_err(|e| format!("connect {}: {e}", t.addr))?;
        let resp = if t.https {
            let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to {}: {e}", t.host))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        };
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        Ok((status, parts.headers, body))
    }

    /// GETs `url` and follows redirects, `max_hops` requests at most; every hop, the last one
    /// the first that is no redirect (or the one where the limit was hit).
    pub async fn follow(&mut self, url: &str, max_hops: usize) -> Vec<Hop> {
        let first = self.get(url).await;
        let mut hops = vec![first];
        let last = hops.last().unwrap().clone();
        hops.extend(self.follow_from(&last, max_hops.saturating_sub(1)).await);
        hops
    }

    /// Follows the redirect `hop` answered with (if it is one), `max_hops` requests at most;
    /// the hops after `hop`. 301/302/303 become `GET`s, 307/308 repeat the method and body.
    pub async fn follow_from(&mut self, hop: &Hop, max_hops: usize) -> Vec<Hop> {
        let mut hops = Vec::new();
        let mut current = hop.clone();
        while current.is_redirect() && hops.len() < max_hops {
            let next = current.location().unwrap();
            let keep = matches!(current.status, 307 | 308);
            current = match (&current.sent, keep) {
                (Some((ct, body)), true) => {
                    let headers: Vec<(&str, &str)> =
                        if ct.is_empty() { vec![] } else { vec![("content-type", ct.as_str())] };
                    let method = current.method.clone();
                    self.request(&method, &next, &headers, Some(body.clone())).await
                }
                (None, true) => {
                    let method = current.method.clone();
                    self.request(&method, &next, &[], None).await
                }
                _ => self.get(&next).await,
            };
            hops.push(current.clone());
        }
        hops
    }

    /// Submits `form` of `page` (with `button`'s name and value, if given); no redirect followed.
    pub async fn submit(&mut self, page: &Hop, form: &Form, button: Option<(&str, &str)>) -> Hop {
        let mut fields: Vec<(&str, &str)> = form.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Some(b) = button {
            fields.push(b);
        }
        let action = html::resolve(&page.url, &form.action);
        if form.method == "GET" {
            let base = action.split('?').next().unwrap_or(&action).to_owned();
            self.get(&format!("{base}?{}", html::form_encode(&fields))).await
        } else {
            self.post_form(&action, &fields).await
        }
    }

    /// On the provider's login page `login_page_hop` (or a redirect leading to it): fills the
    /// login form (its text input = `user`, its password input = `password`), submits it, then
    /// the consent form if the provider shows one, following redirects after each. All the hops
    /// from the submission on (plus any followed to reach the page); the last one is where the
    /// provider sent the browser back to (e.g. the proxy's callback, or further). A wrong
    /// password ends on the login page again with status 401.
    pub async fn sign_in_at_provider(&mut self, login_page_hop: &Hop, user: &str, password: &str) -> Vec<Hop> {
        let mut hops = Vec::new();
        let mut page = login_page_hop.clone();
        if page.is_redirect() {
            hops.extend(self.follow_from(&page, 10).await);
            page = hops.last().unwrap().clone();
        }
        let provider_origin = page.origin().to_owned();
        let Some(mut form) = page.forms().into_iter().find(|f| f.input_types.iter().any(|(_, t)| t == "password"))
        else {
            panic!("no login form at {page}:\n{}", page.body)
        };
        let user_field = form
            .input_types
            .iter()
            .find(|(_, t)| matches!(t.as_str(), "text" | "email"))
            .map_or_else(|| "login".into(), |(n, _)| n.clone());
        let password_field = form.input_types.iter().find(|(_, t)| t == "password").map(|(n, _)| n.clone()).unwrap();
        form.set(&user_field, user).set(&password_field, password);
        let button = form.buttons.first().cloned();
        let submitted = self.submit(&page, &form, button.as_ref().map(|(k, v)| (k.as_str(), v.as_str()))).await;
        hops.push(submitted.clone());
        hops.extend(self.follow_from(&submitted, 20).await);
        // The consent page (prompt=consent asks every time), maybe more than one.
        for _ in 0..3 {
            let last = hops.last().unwrap().clone();
            if last.status != 200 || last.origin() != provider_origin {
                break;
            }
            let Some(consent) =
                last.forms().into_iter().find(|f| f.id.as_deref() == Some("consent") || f.action.ends_with("/confirm"))
            else {
                break;
            };
            let button = consent.buttons.first().cloned();
            let submitted = self.submit(&last, &consent, button.as_ref().map(|(k, v)| (k.as_str(), v.as_str()))).await;
            hops.push(submitted.clone());
            hops.extend(self.follow_from(&submitted, 20).await);
        }
        hops
    }

    /// On the provider's end_session page `hop` (or a redirect leading to it, e.g. the proxy's
    /// sign-out answer): submits its form with `logout=yes` ("Yes, sign me out"; also the
    /// page the provider shows with no session, which a browser submits by script) and follows
    /// redirects; the last hop is the `post_logout_redirect_uri?state=...` (or what it
    /// redirected to).
    pub async fn confirm_provider_logout(&mut self, hop: &Hop) -> Vec<Hop> {
        let mut hops = Vec::new();
        let mut page = hop.clone();
        if page.is_redirect() {
            hops.extend(self.follow_from(&page, 10).await);
            page = hops.last().unwrap().clone();
        }
        let Some(mut form) = page.forms().into_iter().find(|f| f.action.contains("/session/end/confirm")) else {
            panic!("no logout confirmation form at {page}:\n{}\nhops:\n{}", page.body, describe(&hops))
        };
        form.set("logout", "yes");
        let submitted = self.submit(&page, &form, None).await;
        hops.push(submitted.clone());
        hops.extend(self.follow_from(&submitted, 20).await);
        hops
    }

    // --- the cookie jar ---

    /// The `Cookie` header this agent sends to `url` (empty when none).
    pub fn cookie_header(&self, url: &str) -> String {
        let Ok(t) = target(url) else { return String::new() };
        let path = t.path_and_query.split('?').next().unwrap_or("/");
        let mut matching: Vec<&Cookie> = self
            .jar
            .iter()
            .filter(|c| c.domain_matches(&t.host) && c.path_matches(path) && (!c.secure || t.https) && !c.expired())
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching.iter().map(|c| format!("{}={}", c.name, c.value)).collect::<Vec<_>>().join("; ")
    }

    /// The value of cookie `name` stored for `host` (exactly or by a domain cookie; the one with
    /// the longest path when several), not expired.
    pub fn cookie(&self, name: &str, host: &str) -> Option<&str> {
        self.cookie_entry(name, host).map(|c| c.value.as_str())
    }

    pub fn cookie_entry(&self, name: &str, host: &str) -> Option<&Cookie> {
        self.jar
            .iter()
            .filter(|c| c.name == name && c.domain_matches(host) && !c.expired())
            .max_by_key(|c| (c.host_only, c.path.len()))
    }

    /// Overwrites the value of every cookie `name` that `host` gets (keeping their attributes),
    /// or adds a host-only one with path `/` when there is none.
    pub fn set_cookie(&mut self, name: &str, host: &str, value: &str) {
        let mut found = false;
        for c in self.jar.iter_mut().filter(|c| c.name == name && c.domain_matches(host)) {
            value.clone_into(&mut c.value);
            found = true;
        }
        if !found {
            self.jar.push(Cookie {
                name: name.to_owned(),
                value: value.to_owned(),
                domain: host.to_ascii_lowercase(),
                host_only: true,
                path: "/".into(),
                secure: false,
                http_only: false,
                same_site: None,
                expires: None,
                raw: String::new(),
            });
        }
    }

    /// Removes every cookie `name` that `host` gets.
    pub fn remove_cookie(&mut self, name: &str, host: &str) {
        self.jar.retain(|c| !(c.name == name && c.domain_matches(host)));
    }

    /// Stores a `Set-Cookie` header as if `url` had answered with it (deletions included).
    pub fn store_set_cookie(&mut self, url: &str, header: &str) {
        let Ok(target) = target(url) else { return };
        let t = &target;
        let mut parts = header.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else { return };
        let (name, value) = (name.trim().to_owned(), value.trim().trim_matches('"').to_owned());
        if name.is_empty() {
            return;
        }
        let request_path = t.path_and_query.split('?').next().unwrap_or("/");
        let default_path = match request_path.rfind('/') {
            Some(0) | None => "/".to_owned(),
            Some(p) => request_path[..p].to_owned(),
        };
        let mut c = Cookie {
            name,
            value,
            domain: t.host.clone(),
            host_only: true,
            path: default_path,
            secure: false,
            http_only: false,
            same_site: None,
            expires: None,
            raw: header.to_owned(),
        };
        let mut max_age: Option<i64> = None;
        let mut expires: Option<SystemTime> = None;
        for attr in parts {
            let (key, val) = attr.split_once('=').map_or((attr.trim(), ""), |(k, v)| (k.trim(), v.trim()));
            match key.to_ascii_lowercase().as_str() {
                "domain" => {
                    let d = val.trim_start_matches('.').to_ascii_lowercase();
                    if !d.is_empty() {
                        if !(t.host == d || t.host.ends_with(&format!(".{d}"))) {
                            return; // a domain the host may not set: rejected (RFC 6265 5.3 step 6)
                        }
                        c.domain = d;
                        c.host_only = false;
                    }
                }
                "path" if val.starts_with('/') => val.clone_into(&mut c.path),
                "secure" => c.secure = true,
                "httponly" => c.http_only = true,
                "samesite" => c.same_site = Some(val.to_owned()),
                "max-age" => max_age = val.parse().ok(),
                "expires" => expires = parse_http_date(val),
                _ => {}
            }
        }
        c.expires = match max_age {
            Some(s) if s <= 0 => Some(SystemTime::UNIX_EPOCH),
            Some(s) => Some(SystemTime::now() + Duration::from_secs(s.unsigned_abs())),
            None => expires,
        };
        self.jar.retain(|old| !(old.name == c.name && old.domain == c.domain && old.path == c.path));
        if !c.expired() {
            self.jar.push(c);
        }
    }

    pub fn clear_cookies(&mut self) {
        self.jar.clear();
    }
}

/// An HTTP date (`Thu, 01 Jan 1970 00:00:00 GMT`, also with dashes).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.replace('-', " ");
    let ts = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(s.trim()).ok()?;
    Some(SystemTime::from(ts))
}
