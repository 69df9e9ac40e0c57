//! Phase 5, authorize: whether the request may pass. First the downstream mTLS rule
//! `policy_with_default_deny` (a TLS client without a verified certificate is refused with
//! 495), then the route's access policy (deny wins; refused with an identity is 403, without
//! one 401). A request that becomes a tunnel keeps what it was admitted with
//! ([`Admission`]) and is authorized again while it lives: when a reload changes its
//! route's policy, and when its token expires.
//!
//! It runs before the missing route is reported: a client the listener refuses learns
//! nothing about which hosts exist.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, Method, Request};

use super::authn::Identity;
use crate::config::MtlsEnforcement;
use crate::metrics::{AuthzDecision, Metrics, RevokedLabels};
use crate::policy::eval::{CertFacts, Decision, Facts};
use crate::policy::Policy;
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::conn::Conn;
use crate::proxy::error::{Error, Kind, Result};
use crate::proxy::idp::{unix_now, Admitted};
use crate::proxy::snapshot::{CompiledRoute, Snapshot};

/// Admits or refuses a request from `who` on `conn` at the listener: the mTLS default deny.
#[inline]
pub(crate) fn authorize(snap: &Snapshot, conn: &Conn, who: &Identity<'_>) -> Result<()> {
    if let Some(m) = &snap.settings.downstream_mtls {
        if m.enforcement == MtlsEnforcement::PolicyWithDefaultDeny
            && conn.listener().is_tls()
            && who.client_chain.is_none()
        {
            return Err(Error::new(Kind::ClientCertRequired));
        }
    }
    Ok(())
}

/// What a policy decided, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The decision.
    pub decision: AuthzDecision,
    /// The deciding rule's index in the policy (none when no rule matched).
    pub rule: Option<usize>,
}

/// Admits or refuses `req` from `who` on `conn` under `policy`: deny wins, then any allow;
/// refused with 403 when the request had an identity (a valid token or client certificate),
/// 401 when it had none (signing in could change the answer). Counted in `portcullis_authz_decisions_total`.
pub(crate) fn route_policy<B>(
    policy: &Policy,
    snap: &Snapshot,
    route: &CompiledRoute,
    conn: &Conn,
    who: &Identity<'_>,
    req: &Request<B>,
    metrics: &crate::metrics::Metrics,
) -> (Verdict, Result<()>) {
    let facts = Facts {
        identity: who.token.as_deref().map(|t| &t.identity),
        method: req.method().as_str(),
        path: req.uri().path(),
        source_ip: conn.peer().ip(),
        client_cert: who.client_chain.map(|c| &**c.facts()),
        invalid_client_cert: invalid_client_cert(snap, conn, who),
        cors_preflight: cors_preflight(req),
        now: jiff::Timestamp::now(),
    };
    let (verdict, result) = match policy.decide(&facts) {
        Decision::Allow { rule } => (Verdict { decision: AuthzDecision::Allow, rule: Some(rule) }, Ok(())),
        refused => {
            let rule = match refused {
                Decision::Deny { rule } => Some(rule),
                _ => None,
            };
            // A verified client certificate is an identity too: signing in would not change
            // what its holder may do.
            if who.token.is_none() && who.client_chain.is_none() {
                (Verdict { decision: AuthzDecision::Unauthenticated, rule }, Err(Error::new(Kind::Unauthenticated)))
            } else {
                (Verdict { decision: AuthzDecision::Deny, rule }, Err(Error::new(Kind::Forbidden)))
            }
        }
    };
    route.count_decision(metrics, verdict.decision);
    (verdict, result)
}

/// `invalid_client_certificate`: the listener checks client certificates and this client
/// has no verified one (an invalid one fails the TLS handshake, so what reaches a policy is
/// a client that presented none).
fn invalid_client_cert(snap: &Snapshot, conn: &Conn, who: &Identity<'_>) -> bool {
    snap.settings.downstream_mtls.is_some() && conn.listener().is_tls() && who.client_chain.is_none()
}

fn cors_preflight<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.method() == Method::OPTIONS
        && h.contains_key(header::ORIGIN)
        && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// What a tunnel or a streaming response was admitted with, to authorize it again while it
/// lives.
pub(crate) struct Admission {
    /// The snapshot that routed it and the route's index there: its name, the policy it
    /// was admitted under, and the route's policy watch.
    snap: Arc<Snapshot>,
    route: usize,
    token: Option<Arc<Admitted>>,
    cert: Option<Arc<CertFacts>>,
    invalid_cert: bool,
    source_ip: IpAddr,
    method: Method,
    /// Shares the request's buffer: no copy.
    path: Option<PathAndQuery>,
    cors_preflight: bool,
}

/// Why a tunnel's admission was withdrawn (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// A reload changed the route's policy and it no longer admits the tunnel.
    PolicyChanged,
    /// The token it was admitted with expired, and the policy does not admit it without.
    TokenExpired,
    /// The session it was admitted with was signed out, and the policy does not admit it
    /// without.
    SignedOut,
}

impl Revoked {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyChanged => "policy_changed",
            Self::TokenExpired => "token_expired",
            Self::SignedOut => "signed_out",
        }
    }
}

impl Admission {
    /// What `req` from `who` was admitted with on `route` under `policy` (the route's policy
    /// in the snapshot that routed it; `None`: public).
    pub(crate) fn new<B>(
        snap: &Arc<Snapshot>,
        route_idx: usize,
        conn: &Conn,
        who: &Identity<'_>,
        req: &Request<B>,
    ) -> Self {
        // Cheap on purpose (reference counts, no copy): every request of a route with a
        // policy makes one, in case its response streams.
        Self {
            snap: snap.clone(),
            route: route_idx,
            token: who.token.clone(),
            cert: who.client_chain.map(|c| c.facts().clone()),
            invalid_cert: invalid_client_cert(snap, conn, who),
            source_ip: conn.peer().ip(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            cors_preflight: cors_preflight(req),
        }
    }

    /// The route's name.
    pub(crate) fn route_name(&self) -> &str {
        &self.snap.routes.routes()[self.route].route.name
    }

    /// Logs and counts a revocation of `what` (a tunnel, a stream) from `peer`.
    pub(crate) fn record(&self, metrics: &Metrics, why: Revoked, what: &str) {
        let route = self.route_name();
        tracing::info!(route = %route, reason = why.as_str(), peer = %self.source_ip, "closing a {what}: its route's policy no longer admits it");
        metrics
            .connections_revoked
            .get_or_create(&RevokedLabels { route: route.to_owned(), reason: why.as_str() })
            .inc();
    }

    fn admits(&self, policy: Option<&Policy>) -> bool {
        let Some(policy) = policy else { return true };
        let facts = Facts {
            identity: self.token.as_deref().map(|t| &t.identity),
            method: self.method.as_str(),
            path: self.path.as_ref().map_or("/", PathAndQuery::path),
            source_ip: self.source_ip,
            client_cert: self.cert.as_deref(),
            invalid_client_cert: self.invalid_cert,
            cors_preflight: self.cors_preflight,
            now: jiff::Timestamp::now(),
        };
        matches!(policy.decide(&facts), Decision::Allow { .. })
    }

    /// Resolves when the tunnel is no longer admitted; never while it is. A tunnel still
    /// admitted after a change is not touched.
    pub(crate) async fn revoked(&mut self) -> Revoked {
        let route = &self.snap.routes.routes()[self.route];
        let mut policy = route.life.policy.subscribe();
        // A reload since the request was routed: check against what is in force now.
        if policy.borrow().as_deref() != route.route.policy.as_deref() {
            policy.mark_changed();
        }
        let mut sign_outs = self.snap.revocations.changed();
        let revocations = self.snap.revocations.clone();
        let signed_out = |token: &Option<Arc<Admitted>>| {
            token.as_ref().and_then(|t| t.session.as_deref()).is_some_and(|sid| revocations.is_revoked(sid))
        };
        if signed_out(&self.token) {
            sign_outs.mark_changed();
        }
        loop {
            let expiry = self.token.as_ref().map(|t| Duration::from_secs(t.valid_until.saturating_sub(unix_now())));
            let expired = async {
                match expiry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = policy.changed() => {
                    if changed.is_err() {
                        // The route is gone: its deletion ends the tunnel.
                        std::future::pending::<()>().await;
                    }
                    let current = policy.borrow_and_update().clone();
                    if !self.admits(current.as_deref()) {
                        return Revoked::PolicyChanged;
                    }
                }
                () = expired => {
                    self.token = None;
                    let current = policy.borrow().clone();
                    if !self.admits(current.as_deref()) {
                        return Revoked::TokenExpired;
                    }
                }
                Ok(()) = sign_outs.changed(), if self.token.as_ref().is_some_and(|t| t.session.is_some()) => {
                    if signed_out(&self.token) {
                        self.token = None;
                        let current = policy.borrow().clone();
                        if !self.admits(current.as_deref()) {
                            return Revoked::SignedOut;
                        }
                    }
                }
            }
        }
    }
}

/// Why a stream was cut: the access log's error and the client's reset.
#[derive(Debug)]
pub(crate) struct StreamRevoked(Revoked);

impl std::fmt::Display for StreamRevoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Revoked::PolicyChanged => f.write_str("stream closed: its route's policy changed and no longer admits it"),
            Revoked::TokenExpired => f.write_str("stream closed: the token it was admitted with expired"),
            Revoked::SignedOut => f.write_str("stream closed: the session it was admitted with was signed out"),
        }
    }
}

impl std::error::Error for StreamRevoked {}

type RevokedFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Revoked> + Send>>;

pin_project_lite::pin_project! {
    /// A relayed response body on a route with a policy (a gRPC stream, server-sent
    /// events): ended with an error (a stream reset; on HTTP/1.1 the connection closes) when
    /// the policy stops admitting it. The watch is armed the first time the body has to wait
    /// for the upstream, so a response that is sent at once never boxes one.
    pub(crate) struct Revocable<B> {
        #[pin]
        inner: B,
        admission: Option<Admission>,
        watch: Option<RevokedFuture>,
        metrics: Arc<Metrics>,
    }
}

impl<B> Revocable<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// `inner`, ended when `admission` is revoked.
    pub(crate) fn boxed(inner: B, admission: Admission, metrics: Arc<Metrics>) -> ProxyBody {
        use http_body_util::BodyExt as _;
        Self { inner, admission: Some(admission), watch: None, metrics }.boxed_unsync()
    }
}

impl<B> http_body::Body for Revocable<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if polled.is_pending() && this.watch.is_none() {
            if let Some(mut a) = this.admission.take() {
                let metrics = this.metrics.clone();
                *this.watch = Some(Box::pin(async move {
                    let why = a.revoked().await;
                    a.record(&metrics, why, "stream");
                    why
                }));
            }
        }
        if let Some(w) = this.watch.as_mut() {
            if let Poll::Ready(why) = w.as_mut().poll(cx) {
                *this.watch = None;
                return Poll::Ready(Some(Err(Box::new(StreamRevoked(why)))));
            }
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
