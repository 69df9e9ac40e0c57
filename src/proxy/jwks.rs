//! The identity provider's signing keys (its JWKS): fetched in the background, cached behind
//! an `ArcSwap` (the request path loads them and takes no lock), refetched when a token names
//! a key id the cache lacks (at most once per [`REFETCH_INTERVAL`]: a stream of tokens with
//! made-up key ids must not turn into a stream of fetches), and kept when a fetch fails: the
//! provider being down must not sign everyone out. Where the keys are is configured
//! (`jwks_url`) or found by OpenID Connect discovery (the `jwks_uri` of
//! `<idp_provider_url>/.well-known/openid-configuration`, whose `issuer` must be the
//! configured one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use tokio_util::sync::CancellationToken;

use super::body::now_ms;

/// The least time between two fetches asked for by unknown key ids.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS accepted (a provider's has a handful of keys: a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

type JwksClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Where a provider's keys are.
#[derive(Clone, Debug)]
pub enum KeysAt {
    /// A JWKS URL (`jwks_url`).
    Url(http::Uri),
    /// The `jwks_uri` of the issuer's discovery document.
    Discovery {
        /// `idp_provider_url`.
        issuer: String,
    },
}

/// One provider's keys.
pub struct Jwks {
    at: KeysAt,
    /// The `jwks_uri` discovery found (forgotten when fetching from it fails, so that a
    /// provider that moves its keys is followed).
    discovered: ArcSwapOption<http::Uri>,
    client: JwksClient,
    keys: ArcSwap<JwkSet>,
    /// When the last fetch began (ms, see [`now_ms`]); 0 = never.
    last_fetch: AtomicU64,
    /// The least time between two fetches for unknown key ids ([`REFETCH_INTERVAL`]).
    refetch_interval: Duration,
    /// One fetch at a time; the others wait for it and read its keys.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// Keys of the JWKS at `url`, none until the first fetch. `tls` verifies the provider
    /// (the system roots, or a configured CA); `refetch_interval` is [`REFETCH_INTERVAL`]
    /// but in tests.
    pub fn new(at: KeysAt, tls: rustls::ClientConfig, refetch_interval: Duration) -> Arc<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Arc::new(Self {
            at,
            discovered: ArcSwapOption::empty(),
            client,
            keys: ArcSwap::from_pointee(JwkSet { keys: Vec::new() }),
            last_fetch: AtomicU64::new(0),
            refetch_interval,
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<JwkSet> {
        self.keys.load_full()
    }

    /// Fetches the JWKS now and puts it in force; on failure the keys in force stay. Returns
    /// how many keys it holds.
    pub async fn fetch(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        self.last_fetch.store(now_ms().max(1), Ordering::Release);
        let set = tokio::time::timeout(FETCH_TIMEOUT, self.get()).await.map_err(|_| "timed out".to_owned())??;
        let n = set.keys.len();
        self.keys.store(Arc::new(set));
        Ok(n)
    }

    async fn get(&self) -> Result<JwkSet, String> {
        let url = match &self.at {
            KeysAt::Url(url) => url.clone(),
            KeysAt::Discovery { issuer } => {
                if let Some(url) = self.discovered.load_full() {
                    (*url).clone()
                } else {
                    let url = self.discover(issuer).await?;
                    self.discovered.store(Some(Arc::new(url.clone())));
                    url
                }
            }
        };
        let got = self.get_json(&url).await.and_then(|body| {
            let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS: {e}"))?;
            if set.keys.is_empty() {
                return Err(format!("{url}: the JWKS has no keys"));
            }
            Ok(set)
        });
        if got.is_err() {
            self.discovered.store(None);
        }
        got
    }

    /// The `jwks_uri` of `issuer`'s discovery document.
    async fn discover(&self, issuer: &str) -> Result<http::Uri, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url: http::Uri = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
            .parse()
            .map_err(|_| format!("{issuer:?} gives no discovery URL"))?;
        let body = self.get_json(&url).await?;
        let doc: Discovery =
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not an OpenID discovery document: {e}"))?;
        // OpenID Connect Discovery 1.0, section 4.3: the issuer must be the one asked for
        // (a trailing slash aside), or another provider's keys could be taken for its own.
        if doc.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(format!("{url}: names issuer {:?}, not {issuer:?}", doc.issuer));
        }
        crate::config::validate::provider_url(&doc.jwks_uri).map_err(|e| format!("{url}: jwks_uri {e}"))
    }

    async fn get_json(&self, url: &http::Uri) -> Result<Bytes, String> {
        let req = http::Request::get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| format!("{url}: {}", super::error::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: answered {}", resp.status()));
        }
        Ok(Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the body: {e}"))?
            .to_bytes())
    }

    /// What the log names the keys by.
    fn source(&self) -> String {
        match &self.at {
            KeysAt::Url(url) => url.to_string(),
            KeysAt::Discovery { issuer } => format!("discovery of {issuer}"),
        }
    }

    /// The keys after a token named a key id they lack: refetched first, unless a fetch
    /// began less than [`REFETCH_INTERVAL`] ago.
    pub async fn after_unknown_key(&self) -> Arc<JwkSet> {
        let last = self.last_fetch.load(Ordering::Acquire);
        let interval = u64::try_from(self.refetch_interval.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now_ms().saturating_sub(last) < interval {
            // A fetch may be under way (the first, at start): its keys, once it is done.
            drop(self.fetching.lock().await);
            return self.current();
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(keys = %self.source(), error = %e, "refetching the JWKS for an unknown key id failed; the keys in force stay");
        }
        self.current()
    }

    /// Fetches at once, then every `every`, until `stop`.
    pub async fn run(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            match self.fetch().await {
                Ok(n) => tracing::debug!(keys = %self.source(), count = n, "JWKS fetched"),
                Err(e) => {
                    tracing::warn!(keys = %self.source(), error = %e, "fetching the JWKS failed; the keys in force stay");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A JWKS server on loopback whose document the test changes, counting its requests.
    struct Server {
        url: http::Uri,
        doc: Arc<ArcSwap<String>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn server(doc: &str) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap()).parse().unwrap();
        let doc = Arc::new(ArcSwap::from_pointee(doc.to_owned()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::Relaxed);
                        let body = d.load_full().as_str().to_owned();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server { url, doc, hits, task }
    }

    fn jwks(kids: &[&str]) -> String {
        let keys: Vec<_> = kids
            .iter()
            .map(|k| {
                serde_json::json!({"kty": "EC", "crv": "P-256", "kid": k, "alg": "ES256",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    fn tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(crate::pki::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    fn kids(set: &JwkSet) -> Vec<String> {
        set.keys.iter().filter_map(|k| k.common.key_id.clone()).collect()
    }

    #[tokio::test]
    async fn fetch_rotate_rate_limit_and_keep_the_last_good_keys() {
        let s = server(&jwks(&["k1"])).await;
        let j = Jwks::new(KeysAt::Url(s.url.clone()), tls(), Duration::from_secs(1));
        assert!(j.current().keys.is_empty());
        assert_eq!(j.fetch().await, Ok(1));
        assert_eq!(kids(&j.current()), ["k1"]);
        // The provider rotates; an unknown key id within the interval does not refetch.
        s.doc.store(Arc::new(jwks(&["k1", "k2"])));
        let before = s.hits.load(Ordering::Relaxed);
        assert_eq!(kids(&*j.after_unknown_key().await), ["k1"]);
        assert_eq!(s.hits.load(Ordering::Relaxed), before);
        // Past the interval it does.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(kids(&*j.after_unknown_key().await), ["k1", "k2"]);
        assert_eq!(s.hits.load(Ordering::Relaxed), before + 1);
        // A bad document, then the provider gone: the keys in force stay.
        s.doc.store(Arc::new("{\"keys\": []}".to_owned()));
        assert!(j.fetch().await.unwrap_err().contains("no keys"));
        s.doc.store(Arc::new("<html>".to_owned()));
        assert!(j.fetch().await.unwrap_err().contains("not a JWKS"));
        s.task.abort();
        let _ = s.task.await;
        assert!(j.fetch().await.is_err());
        assert_eq!(kids(&j.current()), ["k1", "k2"]);
    }
}
