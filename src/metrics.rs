//! The PRODUCT.md metrics. Every label value is bounded: listener names are fixed, route
//! labels are route names from the config, methods outside the standard set become `OTHER`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `portcullis_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Listener name (`https-ingress`, `http-ingress`, `quic-ingress`).
    pub listener: &'static str,
    /// Route name, or `none`.
    pub route: String,
    /// Bounded method.
    pub method: &'static str,
    /// Status code.
    pub code: u16,
}

/// Labels of the duration histogram (no code: the histogram is observed once per request).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// Listener name.
    pub listener: &'static str,
    /// Route name, or `none`.
    pub route: String,
    /// Bounded method.
    pub method: &'static str,
}

/// Labels of `portcullis_upstream_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Route name.
    pub route: String,
    /// Upstream `host:port` from the config (bounded by the config).
    pub upstream: String,
    /// `success`, `connect_failure`, `no_endpoints`, `reset`, `timeout`, `not_sent`.
    pub outcome: &'static str,
}

/// Labels of `portcullis_upstream_retries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// Route name.
    pub route: String,
    /// `retried` or `budget_exhausted`.
    pub outcome: &'static str,
}

/// Labels of `portcullis_upstream_healthy`, `portcullis_upstream_ejected` and
/// `portcullis_upstream_ejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamHealthLabels {
    /// Route name.
    pub route: String,
    /// Upstream `host:port`.
    pub upstream: String,
}

/// Labels of the per-generation connection gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabels {
    /// Listener name.
    pub listener: &'static str,
    /// Listener generation (a series disappears when its generation has no connection left).
    pub generation: u64,
}

/// Labels with just the listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: &'static str,
}

/// Labels of `portcullis_authz_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// Route name.
    pub route: String,
    /// `allow`, `deny` or `unauthenticated`.
    pub decision: &'static str,
}

/// An access-policy decision, as the access log and `portcullis_authz_decisions_total`
/// name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzDecision {
    /// The policy admitted the request.
    Allow,
    /// Refused, with an identity (403).
    Deny,
    /// Refused, without an identity (401: signing in could change the answer).
    Unauthenticated,
}

impl AuthzDecision {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Labels of `portcullis_connections_revoked_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevokedLabels {
    /// Route name.
    pub route: String,
    /// `policy_changed` or `token_expired`.
    pub reason: &'static str,
}

/// Labels of `portcullis_tunnels_active`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// Route name.
    pub route: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
}

/// Labels of `portcullis_tunnel_bytes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelBytesLabels {
    /// Route name.
    pub route: String,
    /// `to_upstream` or `to_client`.
    pub direction: &'static str,
}

/// Labels of `portcullis_tunnel_datagrams_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    /// Route name.
    pub route: String,
    /// `too_large` (more than the path carries) or `unknown_context`.
    pub reason: &'static str,
}

/// Every metric the process exports.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Requests answered, by code.
    pub requests: Family<RequestLabels, Counter>,
    /// Request durations (first byte in to last byte out).
    pub duration: Family<DurationLabels, Histogram>,
    /// Open downstream connections.
    pub connections_active: Family<ListenerLabels, Gauge>,
    /// Accepted downstream connections.
    pub connections_total: Family<ListenerLabels, Counter>,
    /// Upstream attempts by outcome.
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// 1 while an upstream passes its health checks (or has none), 0 when it fails them.
    pub upstream_healthy: Family<UpstreamHealthLabels, Gauge>,
    /// Outlier ejections per endpoint.
    pub upstream_ejections: Family<UpstreamHealthLabels, Counter>,
    /// 1 while outlier detection has the endpoint out.
    pub upstream_ejected: Family<UpstreamHealthLabels, Gauge>,
    /// Retries per route, by outcome (`retried`, `budget_exhausted`).
    pub upstream_retries: Family<RetryLabels, Counter>,
    /// Listener generations currently draining.
    pub draining: Gauge,
    /// Open downstream connections per listener generation.
    pub generation_connections: Family<GenerationLabels, Gauge>,
    /// 1 when the last reload was applied, 0 when it was rejected.
    pub reload_success: Gauge,
    /// Unix time of the last applied reload.
    pub reload_success_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Access-policy decisions by route.
    pub authz_decisions: Family<AuthzLabels, Counter>,
    /// Long-lived connections closed because their policy stopped admitting them.
    pub connections_revoked: Family<RevokedLabels, Counter>,
    /// Open tunnels (CONNECT, CONNECT-UDP; WebSockets are requests).
    pub tunnels_active: Family<TunnelLabels, Gauge>,
    /// Payload bytes carried by tunnels, by direction.
    pub tunnel_bytes: Family<TunnelBytesLabels, Counter>,
    /// UDP datagrams a tunnel could not carry.
    pub datagrams_dropped: Family<DroppedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers everything under the `portcullis_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        let duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request start to the last response byte",
            duration.clone(),
        );
        let connections_active = Family::<ListenerLabels, Gauge>::default();
        registry.register("downstream_connections_active", "Open downstream connections", connections_active.clone());
        let connections_total = Family::<ListenerLabels, Counter>::default();
        registry.register("downstream_connections", "Accepted downstream connections", connections_total.clone());
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register("upstream_requests", "Requests sent upstream, by outcome", upstream_requests.clone());
        let upstream_healthy = Family::<UpstreamHealthLabels, Gauge>::default();
        registry.register("upstream_healthy", "1 if the upstream passes its health checks", upstream_healthy.clone());
        let upstream_ejections = Family::<UpstreamHealthLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Times outlier detection ejected the endpoint",
            upstream_ejections.clone(),
        );
        let upstream_ejected = Family::<UpstreamHealthLabels, Gauge>::default();
        registry.register(
            "upstream_ejected",
            "1 while outlier detection has the endpoint out",
            upstream_ejected.clone(),
        );
        let upstream_retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Upstream requests retried on another endpoint, or not retried for the retry budget",
            upstream_retries.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "listener_manager_total_filter_chains_draining",
            "Listener generations draining (0 when none)",
            draining.clone(),
        );
        let generation_connections = Family::<GenerationLabels, Gauge>::default();
        registry.register(
            "listener_generation_connections_active",
            "Open downstream connections per listener generation",
            generation_connections.clone(),
        );
        let reload_success = Gauge::default();
        registry.register(
            "config_last_reload_success",
            "1 if the last config reload was applied",
            reload_success.clone(),
        );
        let reload_success_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last applied config",
            reload_success_timestamp.clone(),
        );
        let authz_decisions = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authz_decisions",
            "Access-policy decisions (allow, deny, unauthenticated) by route",
            authz_decisions.clone(),
        );
        let connections_revoked = Family::<RevokedLabels, Counter>::default();
        registry.register(
            "connections_revoked",
            "Long-lived connections closed because their route's policy no longer admits them",
            connections_revoked.clone(),
        );
        let tunnels_active = Family::<TunnelLabels, Gauge>::default();
        registry.register("tunnels_active", "Open TCP and UDP tunnels", tunnels_active.clone());
        let tunnel_bytes = Family::<TunnelBytesLabels, Counter>::default();
        registry.register("tunnel_bytes", "Bytes carried by TCP and UDP tunnels", tunnel_bytes.clone());
        let datagrams_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register(
            "tunnel_datagrams_dropped",
            "UDP datagrams a tunnel dropped (larger than the path carries, or of an unknown context)",
            datagrams_dropped.clone(),
        );
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("rustc".to_owned(), option_env!("PORTCULLIS_RUSTC").unwrap_or("unknown").to_owned()),
            ])
            .set(1);
        registry.register("build_info", "Build information (always 1)", build_info);
        Self {
            registry,
            requests,
            duration,
            connections_active,
            connections_total,
            upstream_requests,
            upstream_healthy,
            upstream_ejections,
            upstream_ejected,
            upstream_retries,
            draining,
            generation_connections,
            reload_success,
            reload_success_timestamp,
            authz_decisions,
            connections_revoked,
            tunnels_active,
            tunnel_bytes,
            datagrams_dropped,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Maps a method to a bounded label value.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// A route's handles on the series it updates on every request, so that the request path
/// does not build an owned label set, hash it with SipHash and look it up in a family for
/// each metric. The handles share their values with the family's series (prometheus-client
/// metrics are `Arc`s inside), and the series are created by `get_or_create` on first use
/// exactly as before; none of these families ever removes a series.
///
/// An append-only list in first-use order: a route sees a handful of label combinations (its
/// listeners, methods and status codes), so a lookup is a few pointer loads and key
/// comparisons and takes no lock (a `RwLock` here cost a read-modify-write of a shared cache
/// line per lookup; an `ArcSwap`, more instructions than either). Only appending a new entry
/// can wait, on another thread appending at the same place. At most [`SERIES_CACHED`]
/// entries: combinations past those (an upstream answering with ever new status codes) go to
/// the family each time, so a lookup stays short and memory bounded.
pub struct SeriesCache<K, M> {
    head: std::sync::OnceLock<Box<SeriesNode<K, M>>>,
}

/// How many label combinations a [`SeriesCache`] keeps.
pub const SERIES_CACHED: usize = 32;

struct SeriesNode<K, M> {
    key: K,
    metric: M,
    next: std::sync::OnceLock<Box<SeriesNode<K, M>>>,
}

impl<K, M> Default for SeriesCache<K, M> {
    fn default() -> Self {
        Self { head: std::sync::OnceLock::new() }
    }
}

impl<K: Eq + Clone, M> SeriesCache<K, M> {
    /// Runs `f` on the cached metric of `key`, which `make` creates on first use.
    pub fn with<R>(&self, key: &K, make: impl FnOnce() -> M, f: impl FnOnce(&M) -> R) -> R {
        let mut link = &self.head;
        let mut len = 0;
        while let Some(node) = link.get() {
            if node.key == *key {
                return f(&node.metric);
            }
            link = &node.next;
            len += 1;
        }
        let metric = make();
        let r = f(&metric);
        if len >= SERIES_CACHED {
            return r;
        }
        // Append; another thread may have appended meanwhile (its node may even be this key:
        // then both handles are the same family series, and this one is dropped).
        let mut node = Box::new(SeriesNode { key: key.clone(), metric, next: std::sync::OnceLock::new() });
        loop {
            match link.set(node) {
                Ok(()) => return r,
                Err(ours) => {
                    let theirs = link.get().expect("a OnceLock that refused a value holds one");
                    if theirs.key == ours.key {
                        return r;
                    }
                    node = ours;
                    link = &theirs.next;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn series_cache_hands_out_one_handle_per_key() {
        let cache: SeriesCache<(usize, u16), Counter> = SeriesCache::default();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Counter::default()
        };
        for code in [200, 404, 200, 503, 200, 404] {
            cache.with(&(1, code), make, |c| {
                c.inc();
            });
        }
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(cache.with(&(1, 200), Counter::default, Counter::get), 3);
        assert_eq!(cache.with(&(1, 404), Counter::default, Counter::get), 2);
        assert_eq!(cache.with(&(1, 503), Counter::default, Counter::get), 1);
    }

    #[test]
    fn series_cache_keeps_a_bounded_list() {
        let cache: SeriesCache<u16, Counter> = SeriesCache::default();
        let family = prometheus_client::metrics::family::Family::<Vec<(String, String)>, Counter>::default();
        for code in 100..300u16 {
            cache.with(
                &code,
                || family.get_or_create(&vec![("code".to_owned(), code.to_string())]).clone(),
                |c| {
                    c.inc();
                },
            );
        }
        let mut cached = 0;
        let mut link = &cache.head;
        while let Some(node) = link.get() {
            cached += 1;
            link = &node.next;
        }
        assert_eq!(cached, SERIES_CACHED);
        // Past the cached ones, increments still land on the family's series.
        assert_eq!(family.get_or_create(&vec![("code".to_owned(), "299".to_owned())]).get(), 1);
    }

    #[test]
    fn series_cache_appends_from_many_threads() {
        let cache: std::sync::Arc<SeriesCache<usize, Counter>> = std::sync::Arc::default();
        let family = std::sync::Arc::new(
            prometheus_client::metrics::family::Family::<Vec<(String, String)>, Counter>::default(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cache, family) = (cache.clone(), family.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let key = (i * 7 + t) % 50;
                        let labels = vec![("k".to_owned(), key.to_string())];
                        cache.with(
                            &key,
                            || family.get_or_create(&labels).clone(),
                            |c| {
                                c.inc();
                            },
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Every increment landed on the family's series of its key, cached or not.
        let total: u64 = (0..50).map(|k| family.get_or_create(&vec![("k".to_owned(), k.to_string())]).get()).sum();
        assert_eq!(total, 800);
        for k in 0..50 {
            let labels = vec![("k".to_owned(), k.to_string())];
            let direct = family.get_or_create(&labels).get();
            let through_cache = cache.with(&k, || family.get_or_create(&labels).clone(), Counter::get);
            assert_eq!(through_cache, direct, "key {k}");
        }
    }
}
