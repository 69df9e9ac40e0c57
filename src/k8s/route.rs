//! A `Route` custom resource as a route: its typed spec becomes the route input field by
//! field, `to` hosts that name Services are resolved to their ready endpoints, Secret
//! references to PEM, and `tls` to the certificate served for the route's host. A tunnel
//! Route (`from: tcp+https://host:port`, `to: [tcp://svc:port]`) resolves its Services the
//! same way, keeping the `tcp://` or `udp://` scheme.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::objects::{endpoint_upstreams, secret_pem, service_port, tls_certificate, Objects};
use super::translate::{cluster_host_default, SpecNames, Translated};
use crate::config::input::{
    Destinations, Given, GrpcProbeInput, HealthCheckInput, HttpProbeInput, PayloadInput, RouteInput, StatusRangeInput,
    TcpProbeInput, UpstreamInput,
};
use crate::config::validate::{self, Errors};
use crate::config::{FieldError, TunnelProtocol, UpstreamScheme};

/// Translates a `Route` custom resource: its typed spec becomes the route input field by
/// field, `to` hosts that name Services are resolved to endpoints, and Secrets to PEM.
pub fn translate_route(route: &crate::k8s::crd::Route, objects: &Objects) -> Result<Translated, Vec<FieldError>> {
    let ns = route.namespace().unwrap_or_default();
    let mut errs = Errors::default();
    let mut out = Translated::default();
    let spec = &route.spec;
    let mut input = route_input(spec);
    input.name = Some(format!("{ns}/{}", route.name_any()));
    // A bad `from` is the validator's to report; here it only decides what kind of route this is.
    let from = validate::parse_route_from(&spec.from).ok();
    let tunnel = from.as_ref().and_then(|(_, t)| t.map(|t| t.protocol));
    let mut to = Vec::new();
    for (i, entry) in spec.to.iter().enumerate() {
        match resolve_to(&ns, entry, tunnel, objects) {
            Ok(urls) => to.extend(urls),
            Err(e) => errs.push(format!("spec.to[{i}]"), e),
        }
    }
    input.to = Some(Destinations::Resolved(to));
    // A tunnel has no Host header to keep (and the validator refuses the key on one).
    if tunnel.is_none() {
        cluster_host_default(&mut input);
    }
    if let Some(name) = &spec.tls_custom_ca_secret {
        match secret_pem(&ns, name, "ca.crt", objects) {
            Ok(pem) => input.tls_custom_ca = Some(pem),
            Err(e) => errs.push("spec.tlsCustomCaSecret", e),
        }
    }
    if let Some(name) = &spec.tls_client_secret {
        for (slot, key) in [(&mut input.tls_client_cert, "tls.crt"), (&mut input.tls_client_key, "tls.key")] {
            match secret_pem(&ns, name, key, objects) {
                Ok(pem) => *slot = Some(pem),
                Err(e) => errs.push("spec.tlsClientSecret", e),
            }
        }
    }
    if let Some(tls) = &spec.tls {
        match tls_certificate(&ns, &tls.secret_name, objects) {
            Ok(c) => {
                if let Some((crate::config::HostMatch::Exact(h) | crate::config::HostMatch::Wildcard(h), _)) = &from {
                    if !c.names.iter().any(|n| n == h || n.strip_prefix("*.") == h.split_once('.').map(|x| x.1)) {
                        out.warnings.push(FieldError {
                            path: "spec.tls.secretName".into(),
                            message: format!("the certificate does not name {h}; clients that verify it will fail"),
                        });
                    }
                }
                out.certificates.push(c);
            }
            Err(e) => errs.push("spec.tls.secretName", e),
        }
    }
    if errs.is_empty() {
        if let Some(r) = validate::route(&input, &SpecNames, &mut errs) {
            out.routes.push(std::sync::Arc::new(r));
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs.into_vec())
    }
}

/// The route keys of a Route spec, typed as the CRD already types them.
fn route_input(spec: &crate::k8s::crd::RouteSpec) -> RouteInput {
    use crate::config::input::{HashCookieInput, OutlierInput, RingSizeInput};
    use crate::config::LbPolicy;
    use crate::k8s::crd::{LoadBalancingPolicy, RetryOn};
    let headers = |h: &Option<BTreeMap<String, String>>| {
        h.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    RouteInput {
        from: Some(spec.from.clone()),
        prefix: spec.prefix.clone(),
        path: spec.path.clone(),
        regex: spec.regex.clone(),
        timeout: spec.timeout.clone().map(Given::Text),
        idle_timeout: spec.idle_timeout.clone().map(Given::Text),
        allow_websockets: spec.allow_websockets,
        preserve_host_header: spec.preserve_host_header,
        host_rewrite: spec.host_rewrite.clone(),
        prefix_rewrite: spec.prefix_rewrite.clone(),
        regex_rewrite_pattern: spec.regex_rewrite_pattern.clone(),
        regex_rewrite_substitution: spec.regex_rewrite_substitution.clone(),
        set_request_headers: headers(&spec.set_request_headers),
        remove_request_headers: spec.remove_request_headers.iter().flatten().cloned().map(Some).collect(),
        set_response_headers: headers(&spec.set_response_headers),
        tls_skip_verify: spec.tls_skip_verify,
        tls_server_name: spec.tls_server_name.clone(),
        load_balancing_policy: spec.load_balancing_policy.map(|p| {
            Given::Parsed(match p {
                LoadBalancingPolicy::ROUND_ROBIN => LbPolicy::RoundRobin,
                LoadBalancingPolicy::RANDOM => LbPolicy::Random,
                LoadBalancingPolicy::LEAST_REQUEST => LbPolicy::LeastRequest,
                LoadBalancingPolicy::RING_HASH => LbPolicy::RingHash,
                LoadBalancingPolicy::MAGLEV => LbPolicy::Maglev,
            })
        }),
        lb_hash_header: spec.lb_hash_header.clone(),
        lb_hash_cookie: spec.lb_hash_cookie.as_ref().map(|c| HashCookieInput {
            name: Some(c.name.clone()),
            ttl: c.ttl.clone().map(Given::Text),
            path: c.path.clone(),
            ..HashCookieInput::default()
        }),
        ring_hash_lb_config: spec.ring_hash_lb_config.as_ref().map(|r| RingSizeInput {
            minimum_ring_size: r.minimum_ring_size,
            maximum_ring_size: r.maximum_ring_size,
            ..RingSizeInput::default()
        }),
        healthy_panic_threshold: spec.healthy_panic_threshold.map(u64::from),
        outlier_detection: spec.outlier_detection.as_ref().map(|o| OutlierInput {
            consecutive_5xx: o.consecutive_5xx.map(u64::from),
            consecutive_gateway_failure: o.consecutive_gateway_failure.map(u64::from),
            interval: o.interval.clone().map(Given::Text),
            base_ejection_time: o.base_ejection_time.clone().map(Given::Text),
            max_ejection_time: o.max_ejection_time.clone().map(Given::Text),
            max_ejection_percent: o.max_ejection_percent.map(u64::from),
            ..OutlierInput::default()
        }),
        retries: spec.retries.map(u64::from),
        // The validator reads the file's spelling, which the CRD's enum serialises to.
        retry_on: spec.retry_on.as_ref().map(|list| {
            list.iter()
                .map(|r| match r {
                    RetryOn::FiveXx => "5xx",
                    RetryOn::GatewayError => "gateway-error",
                    RetryOn::Reset => "reset",
                })
                .map(str::to_owned)
                .collect()
        }),
        health_checks: spec
            .health_checks
            .iter()
            .flatten()
            .map(|h| {
                Some(HealthCheckInput {
                    interval: h.interval.clone().map(Given::Text),
                    timeout: h.timeout.clone().map(Given::Text),
                    unhealthy_threshold: h.unhealthy_threshold.map(u64::from),
                    healthy_threshold: h.healthy_threshold.map(u64::from),
                    http: h.http_health_check.as_ref().map(|p| HttpProbeInput {
                        path: p.path.clone(),
                        host: p.host.clone(),
                        expected_statuses: p
                            .expected_statuses
                            .iter()
                            .flatten()
                            .map(|r| {
                                Some(StatusRangeInput { start: Some(u64::from(r.start)), end: Some(u64::from(r.end)) })
                            })
                            .collect(),
                    }),
                    tcp: h.tcp_health_check.as_ref().map(|t| TcpProbeInput {
                        send: t.send.as_ref().map(payload),
                        receive: t.receive.iter().flatten().map(|p| Some(payload(p))).collect(),
                    }),
                    grpc: h.grpc_health_check.as_ref().map(|g| GrpcProbeInput {
                        service_name: g.service_name.clone(),
                        authority: g.authority.clone(),
                    }),
                    ..HealthCheckInput::default()
                })
            })
            .collect(),
        // The validator parses the tree; its errors come out under `spec.policy` (SpecNames).
        policy: spec.policy.clone(),
        shorthand: crate::policy::shorthand::Shorthand {
            public: spec.allow_public_unauthenticated_access.unwrap_or(false),
            any_authenticated_user: spec.allow_any_authenticated_user.unwrap_or(false),
            users: spec.allowed_users.clone().unwrap_or_default(),
            domains: spec.allowed_domains.clone().unwrap_or_default(),
            idp_claims: spec.allowed_idp_claims.clone().unwrap_or_default(),
        },
        pass_identity_headers: spec.pass_identity_headers,
        jwt_claims_headers: spec
            .jwt_claims_headers
            .as_ref()
            .map(|m| m.iter().map(|(h, c)| (h.clone(), c.clone())).collect()),
        ..RouteInput::default()
    }
}

/// A CRD payload as the file's reader gives it: the validator decodes and checks it.
fn payload(p: &crate::k8s::crd::Payload) -> PayloadInput {
    PayloadInput { text: p.text.clone(), binary: p.binary.clone() }
}

/// Resolves one `to` entry of a Route: a URL whose host names a Service becomes that
/// Service's ready endpoints (with the entry's weight each); other hosts stay as written.
/// On a tunnel Route (`tunnel`), the Service port of the tunnel's protocol is preferred.
fn resolve_to(
    ns: &str,
    entry: &str,
    tunnel: Option<TunnelProtocol>,
    objects: &Objects,
) -> Result<Vec<UpstreamInput>, String> {
    let written = UpstreamInput::parse(entry)?;
    let up = validate::upstream(&written)?;
    let kind_matches = match (tunnel, up.scheme) {
        (Some(TunnelProtocol::Tcp), s) => s == UpstreamScheme::Tcp,
        (Some(TunnelProtocol::Udp), s) => s == UpstreamScheme::Udp,
        (None, s) => !matches!(s, UpstreamScheme::Tcp | UpstreamScheme::Udp),
    };
    if !kind_matches {
        // Not resolved: the validator refuses the entry (`spec.to[0]: must be udp:// on a udp+
        // route`), whatever the Service's endpoints are.
        return Ok(vec![written]);
    }
    let host = up.host.to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let (svc_ns, name, must_exist) = match labels.as_slice() {
        [name] => (ns.to_owned(), (*name).to_owned(), true),
        [name, n] => ((*n).to_owned(), (*name).to_owned(), false),
        [name, n, "svc"] | [name, n, "svc", "cluster", "local"] => ((*n).to_owned(), (*name).to_owned(), true),
        _ => return Ok(vec![written]),
    };
    let key = (svc_ns.clone(), name.clone());
    let Some(svc) = objects.service(&key) else {
        return if must_exist { Err(format!("Service {svc_ns}/{name} not found")) } else { Ok(vec![written]) };
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let port: i32 = up.authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
    let Some(svc_port) = service_port(&spec, tunnel, |p| p.port == port) else {
        return Err(format!("Service {svc_ns}/{name} has no port {port}"));
    };
    let scheme = match up.scheme {
        UpstreamScheme::Http => "http",
        UpstreamScheme::Https => "https",
        UpstreamScheme::H2c => "h2c",
        UpstreamScheme::Tcp => "tcp",
        UpstreamScheme::Udp => "udp",
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        let ext = spec.external_name.unwrap_or_default();
        return Ok(vec![UpstreamInput { url: format!("{scheme}://{ext}:{port}"), weight: up.weight }]);
    }
    Ok(endpoint_upstreams(&key, svc_port, scheme, objects, up.weight))
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::k8s::test_support::*;

    #[test]
    fn route_resources_use_the_same_validator_and_resolve_services() {
        let r = route_cr(serde_json::json!({
            "from": "https://api.example.com",
            "prefix": "/v1",
            "to": ["http://app:80,3", "h2c://app.web.svc.cluster.local:9000", "https://api.example.org"],
            "idleTimeout": "0",
            "setRequestHeaders": {"X-Mixed-Case": "1"},
            "healthChecks": [
                {"interval": "5s", "httpHealthCheck": {"path": "/healthz", "host": "h.internal", "expectedStatuses": [{"start": 200, "end": 400}]}},
                {"tcpHealthCheck": {"send": {"text": "50494e47"}, "receive": [{"binary": "T0s="}]}},
            ],
        }));
        let t = translate_route(&r, &objects()).unwrap();
        let route = &t.routes[0];
        assert_eq!(route.name, "web/api");
        assert_eq!(
            upstreams(route),
            vec!["Http://10.244.1.7:8080", "H2c://10.244.1.7:9090", "Https://api.example.org:443"]
        );
        assert_eq!(route.to[0].weight, 3);
        assert_eq!(route.idle_timeout, Some(None));
        assert_eq!(route.set_request_headers[0].0, "x-mixed-case");
        assert_eq!(route.health_checks[0].interval, std::time::Duration::from_secs(5));
        assert_eq!(
            route.health_checks[0].kind,
            crate::config::HealthCheckKind::Http {
                path: "/healthz".into(),
                host: Some("h.internal".into()),
                expected_statuses: std::iter::once(200..400).collect()
            }
        );
        assert_eq!(
            route.health_checks[1].kind,
            crate::config::HealthCheckKind::Tcp { send: Some(b"PING".to_vec()), receive: vec![b"OK".to_vec()] }
        );
        // A gRPC check on a Route with http:// upstreams names the CRD field.
        let r = route_cr(serde_json::json!({
            "from": "https://a.test", "to": ["http://app:80"],
            "healthChecks": [{"grpcHealthCheck": {"serviceName": "app"}}],
        }));
        let errs = translate_route(&r, &objects()).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("spec.healthChecks[0].grpcHealthCheck: grpc_health_check needs h2c://"),
            "{errs:?}"
        );
    }

    #[test]
    fn route_errors_use_the_crd_spelling() {
        let r =
            route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://missing:80"], "idleTimeout": "soon"}));
        let errs = translate_route(&r, &objects()).unwrap_err();
        assert_eq!(errs[0].to_string(), "spec.to[0]: Service web/missing not found");
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"], "idleTimeout": "soon"}));
        let errs = translate_route(&r, &objects()).unwrap_err();
        assert!(errs[0].to_string().starts_with("spec.idleTimeout: invalid duration \"soon\""), "{errs:?}");
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:81"]}));
        assert_eq!(
            translate_route(&r, &objects()).unwrap_err()[0].to_string(),
            "spec.to[0]: Service web/app has no port 81"
        );
    }

    #[test]
    fn load_balancing_fields_reach_the_route() {
        use crate::config::{HashCookie, HashOn, LbPolicy, OutlierDetection, RingSize};
        use std::time::Duration;
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "loadBalancingPolicy": "RING_HASH",
            "lbHashHeader": "X-User",
            "ringHashLbConfig": {"minimumRingSize": 1024, "maximumRingSize": 4096},
            "healthyPanicThreshold": 0,
            "outlierDetection": {
                "consecutive5xx": 3,
                "consecutiveGatewayFailure": 0,
                "interval": "5s",
                "baseEjectionTime": "1s",
                "maxEjectionTime": "1m",
                "maxEjectionPercent": 50,
            },
            "retries": 2,
            "retryOn": ["5xx", "gateway-error", "reset"],
        }));
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        assert_eq!(route.load_balancing_policy, LbPolicy::RingHash);
        assert!(matches!(&route.hash_on, HashOn::Header(h) if h == "x-user"), "{:?}", route.hash_on);
        assert_eq!(route.ring_size, RingSize { min: 1024, max: 4096 });
        assert_eq!(route.healthy_panic_threshold, 0);
        assert_eq!(
            route.outlier_detection,
            Some(OutlierDetection {
                consecutive_5xx: 3,
                consecutive_gateway_failure: 0,
                interval: Duration::from_secs(5),
                base_ejection_time: Duration::from_secs(1),
                max_ejection_time: Duration::from_secs(60),
                max_ejection_percent: 50,
            })
        );
        assert_eq!(route.retries.attempts, 2);
        assert!(route.retries.on_5xx && route.retries.on_gateway_error && route.retries.on_reset);

        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "loadBalancingPolicy": "MAGLEV",
            "lbHashCookie": {"name": "sticky", "ttl": "1h", "path": "/app"},
            "outlierDetection": {},
            "retries": 0,
        }));
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        assert_eq!(route.load_balancing_policy, LbPolicy::Maglev);
        let cookie = HashCookie { name: "sticky".into(), ttl: Some(Duration::from_secs(3600)), path: "/app".into() };
        assert_eq!(route.hash_on, HashOn::Cookie(cookie));
        assert_eq!(route.outlier_detection, Some(OutlierDetection::default()), "{{}}: Envoy's defaults");
        assert_eq!(route.retries.attempts, 0);

        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"]}));
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        assert_eq!(route.load_balancing_policy, LbPolicy::RoundRobin);
        assert_eq!((route.outlier_detection, route.retries), (None, crate::config::Retries::default()));
        assert_eq!(route.healthy_panic_threshold, 50);
    }

    /// What the schema lets through and the validator refuses is named by its CRD field,
    /// nested keys included (`consecutive_5xx` is `consecutive5xx`).
    #[test]
    fn load_balancing_errors_use_the_crd_spelling() {
        let errs = |extra: serde_json::Value| -> Vec<String> {
            let mut spec = serde_json::json!({"from": "https://a.test", "to": ["http://app:80"]});
            spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            translate_route(&route_cr(spec), &objects()).unwrap_err().iter().map(ToString::to_string).collect()
        };
        let e = errs(serde_json::json!({"outlierDetection": {"interval": "0"}}));
        assert_eq!(e, ["spec.outlierDetection.interval: must be more than 0"]);
        let e = errs(serde_json::json!({"outlierDetection": {"baseEjectionTime": "10m", "consecutive5xx": 5000}}));
        assert_eq!(
            e,
            [
                "spec.outlierDetection.consecutive5xx: 5000 is more than 1000",
                "spec.outlierDetection.maxEjectionTime: 5m0s is less than base_ejection_time 10m0s",
            ]
        );
        let e = errs(serde_json::json!({"lbHashHeader": "X-User"}));
        assert_eq!(e, ["spec.lbHashHeader: has effect only with load_balancing_policy RING_HASH or MAGLEV"]);
        let e = errs(
            serde_json::json!({"loadBalancingPolicy": "RING_HASH", "lbHashCookie": {"name": "a b", "ttl": "soon"}}),
        );
        assert!(e.iter().any(|e| e.starts_with("spec.lbHashCookie.ttl: invalid duration \"soon\"")), "{e:?}");
        assert!(e.contains(&"spec.lbHashCookie.name: \"a b\" is not a valid cookie name".to_owned()), "{e:?}");
        let e = errs(serde_json::json!({"loadBalancingPolicy": "MAGLEV", "ringHashLbConfig": {"minimumRingSize": 8}}));
        assert_eq!(e, ["spec.ringHashLbConfig: has effect only with load_balancing_policy RING_HASH"]);
        let e = errs(serde_json::json!({"healthyPanicThreshold": 101, "retries": 6}));
        assert_eq!(
            e,
            [
                "spec.healthyPanicThreshold: 101 is not a percentage (0 to 100)",
                "spec.retries: 6 is more than 5 (a retry storm is no cure)"
            ]
        );
    }

    #[test]
    fn a_route_policy_decides_its_requests() {
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "policy": [
                {"allow": {"or": [{"http_method": "GET"}, {"http_method": {"is": "HEAD"}}]}},
                {"deny": {"and": [{"http_path": {"starts_with": "/admin"}}]}},
            ],
        }));
        let t = translate_route(&r, &objects()).unwrap();
        let route = &t.routes[0];
        assert_eq!(route.policy.as_ref().map(|p| p.rules.len()), Some(2));
        assert!(admits(route, &anonymous("GET")));
        assert!(admits(route, &anonymous("HEAD")));
        assert!(!admits(route, &anonymous("POST")), "no allow rule matches");
        let admin = crate::policy::eval::Facts { path: "/admin/x", ..anonymous("GET") };
        assert!(!admits(route, &admin), "deny wins");
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"]}));
        assert!(translate_route(&r, &objects()).unwrap().routes[0].policy.is_none(), "no policy: public");
    }

    #[test]
    fn shorthand_keys_add_allow_rules() {
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "policy": [{"deny": {"or": [{"http_method": "DELETE"}]}}],
            "allowPublicUnauthenticatedAccess": true,
            "allowAnyAuthenticatedUser": true,
            "allowedUsers": ["alice@example.com"],
            "allowedDomains": ["example.com"],
            "allowedIdpClaims": {"org": ["acme", "umbrella"]},
        }));
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        let p = route.policy.as_ref().unwrap();
        assert_eq!(p.rules.len(), 6, "the policy's rule, then one per shorthand key: {p:?}");
        assert!(admits(route, &anonymous("GET")), "public");
        assert!(!admits(route, &anonymous("DELETE")), "the policy's deny still wins");
        let r = route_cr(
            serde_json::json!({"from": "https://a.test", "to": ["http://app:80"], "allowedUsers": ["alice@example.com"]}),
        );
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        assert!(!admits(route, &anonymous("GET")), "allowedUsers alone needs an identity");
    }

    #[test]
    fn identity_headers_of_a_route() {
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "passIdentityHeaders": false,
            "jwtClaimsHeaders": {"X-Email": "email", "X-User": "sub"},
        }));
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        assert_eq!(route.pass_identity_headers, Some(false));
        let headers: Vec<(&str, &str)> =
            route.jwt_claims_headers.iter().flatten().map(|(h, c)| (h.as_str(), c.as_str())).collect();
        assert_eq!(headers, [("x-email", "email"), ("x-user", "sub")]);
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"]}));
        let route = &translate_route(&r, &objects()).unwrap().routes[0];
        assert_eq!((route.pass_identity_headers, route.jwt_claims_headers.as_ref()), (None, None), "the global ones");
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "jwtClaimsHeaders": {"X-Portcullis-Jwt-Assertion": "sub", "X-Empty": " "},
        }));
        let errs: Vec<String> = translate_route(&r, &objects()).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            errs.contains(&"spec.jwtClaimsHeaders.X-Portcullis-Jwt-Assertion: \"X-Portcullis-Jwt-Assertion\" cannot carry a claim".to_owned()),
            "{errs:?}"
        );
        assert!(errs.contains(&"spec.jwtClaimsHeaders.X-Empty: names no claim".to_owned()), "{errs:?}");
    }

    #[test]
    fn policy_errors_are_named_under_spec_policy() {
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "policy": [
                {"allow": {"or": [{"http_method": "GET"}]}},
                {"allow": {"and": [{"domain": "example.com"}, {"email": {"eq": "x"}}], "xor": []}},
            ],
        }));
        let errs: Vec<String> = translate_route(&r, &objects()).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            errs.iter().any(|e| e.starts_with("spec.policy[1].allow.and[1].email: unknown operator \"eq\"")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.starts_with("spec.policy[1].allow.xor: unknown operator")), "{errs:?}");
        // The schema asks for a list; a bare rule that reached the controller anyway (an old
        // CRD, say) is still read as PPL reads it, a rule.
        let r = route_cr(serde_json::json!({
            "from": "https://a.test",
            "to": ["http://app:80"],
            "policy": {"allow": {"and": [{"no_such_criterion": true}]}},
        }));
        let errs = translate_route(&r, &objects()).unwrap_err();
        assert_eq!(errs[0].path, "spec.policy.allow.and[0].no_such_criterion", "{errs:?}");
    }

    #[test]
    fn tunnel_routes_resolve_services_keeping_the_scheme() {
        use crate::config::Tunnel;
        let r = route_cr(serde_json::json!({
            "from": "tcp+https://ssh.example.com:2022",
            "to": ["tcp://ssh:22", "tcp://dns.web.svc:53,2", "tcp://10.0.0.5:22"],
        }));
        let t = translate_route(&r, &tunnel_objects()).unwrap();
        let route = &t.routes[0];
        assert_eq!(route.tunnel, Some(Tunnel { protocol: TunnelProtocol::Tcp, port: 2022 }));
        assert_eq!(upstreams(route), vec!["Tcp://10.244.2.5:2222", "Tcp://10.244.3.5:5300", "Tcp://10.0.0.5:22"]);
        assert_eq!(route.to[1].weight, 2);
        assert!(!route.preserve_host_header, "no Host default on a tunnel");
        let r = route_cr(serde_json::json!({
            "from": "udp+https://dns.example.com:53",
            "to": ["udp://dns.web.svc.cluster.local:53"],
        }));
        let route = &translate_route(&r, &tunnel_objects()).unwrap().routes[0];
        assert_eq!(route.tunnel.map(|t| t.protocol), Some(TunnelProtocol::Udp));
        assert_eq!(upstreams(route), vec!["Udp://10.244.3.5:5353"], "the Service's UDP 53");
        assert_eq!(route.to[0].scheme, UpstreamScheme::Udp);
    }

    #[test]
    fn tunnel_route_errors_use_the_crd_spelling() {
        let errs = |spec: serde_json::Value| -> Vec<String> {
            translate_route(&route_cr(spec), &tunnel_objects()).unwrap_err().iter().map(ToString::to_string).collect()
        };
        let e = errs(serde_json::json!({"from": "tcp+https://ssh.example.com:22", "to": ["tcp://ssh:23"]}));
        assert_eq!(e, ["spec.to[0]: Service web/ssh has no port 23"]);
        let e = errs(serde_json::json!({"from": "udp+https://dns.example.com:53", "to": ["tcp://dns:53"]}));
        assert_eq!(e, ["spec.to[0]: must be udp:// on a udp+ route"]);
        let e = errs(serde_json::json!({"from": "https://a.example.com", "to": ["tcp://ssh:22"]}));
        assert_eq!(
            e,
            ["spec.to[0]: must be http://, https:// or h2c:// (tcp:// and udp:// are for tcp+ and udp+ routes)"]
        );
        let e = errs(serde_json::json!({
            "from": "tcp+https://ssh.example.com:22",
            "to": ["tcp://ssh:22"],
            "preserveHostHeader": true,
            "prefix": "/x",
        }));
        assert!(e.contains(&"spec.preserveHostHeader: has no meaning on a tcp+ tunnel route".to_owned()), "{e:?}");
        assert!(e.contains(&"spec.prefix: has no meaning on a tcp+ tunnel route".to_owned()), "{e:?}");
        let e = errs(serde_json::json!({"from": "tcp+https://ssh.example.com", "to": ["tcp://ssh:22"]}));
        assert!(e[0].starts_with("spec.from: \"tcp+https://ssh.example.com\" needs the port"), "{e:?}");
    }
}
