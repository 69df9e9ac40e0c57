//! The `admin` listener (`/healthz`, `/readyz`, `/config_dump`, `/listeners`) and the
//! `metrics-ingress` listener (`/metrics`). Neither ever shows key material.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::duration::format as fmt_duration;
use crate::config::{HostMatch, PathMatch};
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::Proxy;

/// Which small server this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// Health, readiness, config and listener introspection.
    Admin,
    /// Prometheus scrape endpoint.
    Metrics,
}

/// Serves `plane` on `listener` until the process ends.
pub async fn run(plane: Plane, listener: TcpListener, proxy: Arc<Proxy>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((stream, _)) = accepted else { continue };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(answer(plane, &proxy, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(plane: Plane, proxy: &Proxy, req: &Request<Incoming>) -> Response<ProxyBody> {
    let (status, ctype, body) = match (plane, req.uri().path()) {
        (Plane::Metrics, "/metrics") => {
            (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", proxy.metrics.encode())
        }
        (Plane::Admin, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (Plane::Admin, "/readyz") if proxy.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        (Plane::Admin, "/readyz") => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_owned()),
        (Plane::Admin, "/config_dump") => (StatusCode::OK, "application/json", pretty(&config_dump(proxy))),
        (Plane::Admin, "/listeners") => {
            let generation = proxy.listener_generation();
            let connections: std::collections::BTreeMap<String, usize> =
                proxy.drains.connections().into_iter().map(|(g, n)| (g.to_string(), n)).collect();
            let body = json!({
                "listeners": proxy.listeners(),
                "generation": {
                    "current": generation.id,
                    "certificates": generation.cert_ids.iter().map(|(names, fp)| json!({"names": names, "sha1_fingerprint": fp})).collect::<Vec<_>>(),
                    "codec_type": generation.settings.codec_type,
                    "timeout_read": opt_duration(generation.settings.timeouts.read),
                    "timeout_write": opt_duration(generation.settings.timeouts.write),
                    "timeout_idle": opt_duration(generation.settings.timeouts.idle),
                    "downstream_mtls": generation.settings.downstream_mtls.is_some(),
                },
                "connections_by_generation": connections,
                "draining": proxy.drains.status(),
            });
            (StatusCode::OK, "application/json", pretty(&body))
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    resp
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn opt_duration(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| "0".to_owned(), fmt_duration)
}

/// The running config as JSON: everything a person needs to see what is served, nothing
/// secret (certificates appear as source, names and fingerprint only).
pub fn config_dump(proxy: &Proxy) -> serde_json::Value {
    let snap = proxy.snapshot();
    let s = &snap.settings;
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    let certs: Vec<_> = proxy
        .certificates()
        .iter()
        .map(|c| json!({ "source": c.source, "names": c.names, "sha1_fingerprint": c.fingerprint }))
        .collect();
    let routes: Vec<_> = snap
        .routes
        .routes()
        .iter()
        .map(|cr| {
            let r = &cr.route;
            let mut from = match &r.host {
                HostMatch::Any => "https://*".to_owned(),
                HostMatch::Exact(h) => format!("https://{h}"),
                HostMatch::Wildcard(w) => format!("https://*.{w}"),
            };
            if let Some(t) = r.tunnel {
                from = format!("{}+{from}:{}", t.protocol.name(), t.port);
            }
            let (kind, path) = match &r.path {
                PathMatch::Any => ("prefix", "/".to_owned()),
                PathMatch::Prefix(p) => ("prefix", p.clone()),
                PathMatch::Exact(p) => ("path", p.clone()),
                PathMatch::Regex(re) => ("regex", re.as_str().to_owned()),
            };
            json!({
                "name": r.name,
                "from": from,
                kind: path,
                "to": r.to.iter().map(|u| json!({"scheme": u.scheme, "authority": u.authority, "weight": u.weight})).collect::<Vec<_>>(),
                "effective_timeout": opt_duration(cr.upstream_timeout),
                "effective_idle_timeout": opt_duration(cr.stream_idle),
                "allow_websockets": r.allow_websockets,
                "preserve_host_header": r.preserve_host_header,
                "host_rewrite": r.host_rewrite,
                "prefix_rewrite": r.prefix_rewrite,
                "set_request_headers": r.set_request_headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                "remove_request_headers": r.remove_request_headers.iter().map(http::HeaderName::as_str).collect::<Vec<_>>(),
                "set_response_headers": r.set_response_headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                "tls_skip_verify": r.tls.skip_verify,
                "tls_server_name": r.tls.server_name,
                "tls_custom_ca": r.tls.custom_ca.is_some(),
                "tls_client_cert": r.tls.client_cert.is_some(),
                "load_balancing_policy": r.load_balancing_policy,
                "hash_on": match &r.hash_on {
                    crate::config::HashOn::SourceIp => json!("source_ip"),
                    crate::config::HashOn::Header(h) => json!({"header": h.as_str()}),
                    crate::config::HashOn::Cookie(c) => json!({"cookie": c.name}),
                },
                "healthy_panic_threshold": r.healthy_panic_threshold,
                "outlier_detection": r.outlier_detection.map(|o| json!({
                    "consecutive_5xx": o.consecutive_5xx,
                    "consecutive_gateway_failure": o.consecutive_gateway_failure,
                    "interval": crate::config::duration::format(o.interval),
                    "base_ejection_time": crate::config::duration::format(o.base_ejection_time),
                    "max_ejection_time": crate::config::duration::format(o.max_ejection_time),
                    "max_ejection_percent": o.max_ejection_percent,
                })),
                "retries": r.retries.attempts,
                // What each endpoint's live state is now: health, ejection, load.
                "endpoints": cr.balancer.targets().iter().map(|t| json!({
                    "authority": t.upstream.authority,
                    "healthy": t.state.healthy(),
                    "ejected": t.state.ejected(),
                    "in_flight": t.state.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                })).collect::<Vec<_>>(),
                "health_checks": r.health_checks.len(),
                "policy": r.policy.is_some(),
                "pass_identity_headers": cr.pass_identity,
                "jwt_claims_headers": cr.claims_headers.iter().map(|(h, c)| json!({"header": h.as_str(), "claim": c})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": snap.version,
        "applied_at_unix": snap.applied_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "settings": {
            "address": s.address.to_string(),
            "http_redirect_address": addr(s.http_redirect_address),
            "insecure_server": s.insecure_server,
            "codec_type": s.codec_type,
            "timeout_read": opt_duration(s.timeouts.read),
            "timeout_write": opt_duration(s.timeouts.write),
            "timeout_idle": opt_duration(s.timeouts.idle),
            "default_upstream_timeout": opt_duration(s.default_upstream_timeout),
            "drain_timeout": fmt_duration(s.drain_timeout),
            "metrics_address": addr(s.metrics_address),
            "admin_address": addr(s.admin_address),
            "certificates": certs,
            "downstream_mtls": s.downstream_mtls.as_ref().map(|m| json!({
                "enforcement": m.enforcement,
                "max_verify_depth": m.max_verify_depth,
                "ca_certificates": m.ca.len(),
                "crls": m.crls.len(),
            })),
            // Names and switches only: never a secret.
            "identity_provider": s.identity_provider.as_ref().map(|p| json!({
                "idp_provider_url": p.issuer,
                "idp_client_id": p.client_id,
                "jwt_audiences": p.audiences,
                "sign_in": p.sign_in.as_ref().map(|si| json!({
                    "authenticate_service_url": snap.authenticate.as_ref().map(crate::config::ServiceUrl::origin),
                    "idp_scopes": si.scopes,
                    "cookie_name": si.cookie_name,
                    "cookie_expire": fmt_duration(si.cookie_expire),
                })),
                "signing_key": if s.identity_headers.signing_key.is_some() { "configured" } else { "made at start" },
            })),
        },
        "routes": routes,
    })
}
