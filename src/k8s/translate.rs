//! What every translation of a Kubernetes object into the domain model shares: which
//! Ingresses are ours, what one object contributes ([`Translated`]), the cluster's default
//! for the `Host` header, and the custom resources' spelling of fields ([`SpecNames`]). The
//! translations themselves are [`super::ingress`], [`super::route`] and
//! [`super::proxy_config`]: pure functions of the object and the [`super::objects::Objects`]
//! it refers to, no API calls, no state.
//!
//! Each object becomes the validator's typed input directly (`config::input`) and goes
//! through the same validator as the standalone file (`config::validate`), so an Ingress
//! annotation and a YAML key mean exactly the same thing. Errors name the object's own field
//! (`metadata.annotations["portcullis.io/timeout"]`, `spec.rules[0]...`, `spec.idleTimeout`).

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::ResourceExt;

use crate::config::fields::{RouteField, RouteNames, SettingsField, SettingsNames};
use crate::config::input::RouteInput;
use crate::config::{Certificate, FieldError, Route};

/// `spec.controller` of the IngressClasses Portcullis serves.
pub const CONTROLLER_NAME: &str = "portcullis.io/ingress-controller";
/// The deprecated class annotation, still honoured (and logged).
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether an Ingress is ours, and how it said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassDecision {
    /// Ours; `deprecated_annotation` when chosen by `kubernetes.io/ingress.class`.
    Ours {
        /// The deprecated annotation chose the class.
        deprecated_annotation: bool,
    },
    /// Another controller's (or no class and no default of ours).
    NotOurs,
}

/// Kubernetes IngressClass resolution: `spec.ingressClassName`, else the deprecated
/// annotation, else our IngressClass marked default.
pub fn ingress_class(ing: &Ingress, classes: &[IngressClass]) -> ClassDecision {
    let ours = |name: &str| {
        classes.iter().any(|c| {
            c.name_any() == name && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
        })
    };
    if let Some(name) = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
        return if ours(name) { ClassDecision::Ours { deprecated_annotation: false } } else { ClassDecision::NotOurs };
    }
    if let Some(name) = ing.annotations().get(CLASS_ANNOTATION) {
        return if ours(name) { ClassDecision::Ours { deprecated_annotation: true } } else { ClassDecision::NotOurs };
    }
    let default_ours = classes.iter().any(|c| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME)
            && c.annotations().get(DEFAULT_CLASS_ANNOTATION).map(String::as_str) == Some("true")
    });
    if default_ours {
        ClassDecision::Ours { deprecated_annotation: false }
    } else {
        ClassDecision::NotOurs
    }
}

/// What one object contributes to the config.
#[derive(Clone, Debug, Default)]
pub struct Translated {
    /// Its routes (shared with every config they go into; see [`crate::config::Config`]).
    pub routes: Vec<std::sync::Arc<Route>>,
    /// Its certificates (from TLS Secrets).
    pub certificates: Vec<Certificate>,
    /// Problems that do not reject the object (reported as Warning Events).
    pub warnings: Vec<FieldError>,
}

/// Routes from the cluster pass the client's `Host` to the backend unless told otherwise
/// (`preserve_host_header: false`, or a `host_rewrite`): what the Ingress conformance suite
/// expects and what every common ingress controller does, where Pomerium's standalone default
/// (kept by `serve`) is the upstream's own name. docs/configuration.md, "Host".
pub(crate) fn cluster_host_default(input: &mut RouteInput) {
    if input.preserve_host_header.is_none() && input.host_rewrite.is_none() {
        input.preserve_host_header = Some(true);
    }
}

/// A custom resource's spelling: `spec.` and the key path in camelCase (`spec.idleTimeout`,
/// `spec.healthChecks[0].httpHealthCheck.path`). Every segment is camel-cased, header names
/// and the validator's TLS keys included (`spec.tlsCustomCa` for the PEM of
/// `tlsCustomCaSecret`), exactly as these errors have always been named.
pub struct SpecNames;

impl RouteNames for SpecNames {
    fn name(&self, field: RouteField<'_>) -> String {
        match field {
            RouteField::Route => "spec".to_owned(),
            other => format!("spec.{}", camel(&other.key_path())),
        }
    }
}

impl SettingsNames for SpecNames {
    fn name(&self, field: SettingsField) -> String {
        match field {
            // The PEM the validator checks came from this Secret reference.
            SettingsField::IdpCa => "spec.idpCaSecret".to_owned(),
            // The secret values came from these Secret references.
            SettingsField::IdpClientSecret => "spec.idpClientSecretRef".to_owned(),
            SettingsField::CookieSecret => "spec.cookieSecretRef".to_owned(),
            SettingsField::SigningKey => "spec.signingKeySecretRef".to_owned(),
            // Spelt as their keys: spec.idpScopes, spec.authenticateServiceUrl,
            // spec.cookieName, spec.cookieExpire, spec.jwtClaimsHeaders.
            other => format!("spec.{}", camel(&other.key_path())),
        }
    }
}

/// snake_case key path to camelCase (`health_checks[0].http_health_check` to
/// `healthChecks[0].httpHealthCheck`).
fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::ingress::translate_ingress;
    use crate::k8s::route::translate_route;
    use crate::k8s::test_support::*;
    use k8s_openapi::api::networking::v1::IngressClassSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn cluster_routes_preserve_host_unless_told_otherwise() {
        let rule = [("a.test", "/", "Prefix", backend("app", num(80)))];
        let t = translate_ingress(&ingress(&[], &rule), &objects()).unwrap();
        assert!(t.routes[0].preserve_host_header, "an Ingress backend sees the client's Host by default");
        let off = [("portcullis.io/preserve_host_header", "false")];
        let t = translate_ingress(&ingress(&off, &rule), &objects()).unwrap();
        assert!(!t.routes[0].preserve_host_header);
        let rewrite = [("portcullis.io/host_rewrite", "backend.internal")];
        let t = translate_ingress(&ingress(&rewrite, &rule), &objects()).unwrap();
        assert!(!t.routes[0].preserve_host_header, "host_rewrite wins over the default");
        assert_eq!(t.routes[0].host_rewrite.as_deref(), Some("backend.internal"));
        let r = route_cr(serde_json::json!({"from": "https://a.test", "to": ["http://app:80"]}));
        assert!(translate_route(&r, &objects()).unwrap().routes[0].preserve_host_header, "a Route too");
        let r = route_cr(
            serde_json::json!({"from": "https://a.test", "to": ["http://app:80"], "preserveHostHeader": false}),
        );
        assert!(!translate_route(&r, &objects()).unwrap().routes[0].preserve_host_header);
    }

    /// Every global key a ProxyConfig sets is named by its CRD field; the secret ones by the
    /// Secret reference they came from.
    #[test]
    fn settings_fields_have_crd_names() {
        use crate::config::fields::SettingsField as F;
        for (field, name) in [
            (F::IdpCa, "spec.idpCaSecret"),
            (F::IdpClientSecret, "spec.idpClientSecretRef"),
            (F::IdpScopes, "spec.idpScopes"),
            (F::AuthenticateServiceUrl, "spec.authenticateServiceUrl"),
            (F::CookieName, "spec.cookieName"),
            (F::CookieSecret, "spec.cookieSecretRef"),
            (F::CookieExpire, "spec.cookieExpire"),
            (F::SigningKey, "spec.signingKeySecretRef"),
            (F::JwtClaimsHeaders, "spec.jwtClaimsHeaders"),
            (F::JwtLeeway, "spec.jwtLeeway"),
        ] {
            assert_eq!(SettingsNames::name(&SpecNames, field), name);
        }
        assert_eq!(
            RouteNames::name(&SpecNames, RouteField::JwtClaimsHeader("X-Email")),
            "spec.jwtClaimsHeaders.X-Email"
        );
    }

    /// The load-balancing keys' nested fields are camel-cased segment by segment; a digit
    /// after the underscore stays as it is (`consecutive_5xx` is `consecutive5xx`, the CRD's
    /// field).
    #[test]
    fn load_balancing_fields_have_crd_names() {
        for (field, name) in [
            (RouteField::Sub("outlier_detection", "consecutive_5xx"), "spec.outlierDetection.consecutive5xx"),
            (RouteField::Sub("outlier_detection", "interval"), "spec.outlierDetection.interval"),
            (RouteField::Sub("lb_hash_cookie", "ttl"), "spec.lbHashCookie.ttl"),
            (RouteField::Sub("ring_hash_lb_config", "minimum_ring_size"), "spec.ringHashLbConfig.minimumRingSize"),
            (RouteField::Key("healthy_panic_threshold"), "spec.healthyPanicThreshold"),
            (RouteField::Key("retry_on"), "spec.retryOn"),
        ] {
            assert_eq!(RouteNames::name(&SpecNames, field), name);
        }
    }

    #[test]
    fn ingress_class_resolution() {
        let class = |name: &str, controller: &str, default: bool| {
            let mut m = ObjectMeta { name: Some(name.into()), ..Default::default() };
            if default {
                m.annotations = Some([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())].into());
            }
            IngressClass {
                metadata: m,
                spec: Some(IngressClassSpec { controller: Some(controller.into()), parameters: None }),
            }
        };
        let ours = class("portcullis", CONTROLLER_NAME, false);
        let nginx = class("nginx", "k8s.io/ingress-nginx", true);
        let mut ing = ingress(&[], &[]);
        assert_eq!(
            ingress_class(&ing, &[ours.clone(), nginx.clone()]),
            ClassDecision::NotOurs,
            "no class, default is nginx"
        );
        assert_eq!(
            ingress_class(&ing, &[class("portcullis", CONTROLLER_NAME, true)]),
            ClassDecision::Ours { deprecated_annotation: false },
            "our default class"
        );
        ing.metadata.annotations = Some([(CLASS_ANNOTATION.to_owned(), "portcullis".to_owned())].into());
        assert_eq!(
            ingress_class(&ing, std::slice::from_ref(&ours)),
            ClassDecision::Ours { deprecated_annotation: true }
        );
        ing.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
        assert_eq!(ingress_class(&ing, &[ours.clone(), nginx]), ClassDecision::NotOurs, "spec.ingressClassName wins");
        ing.spec.as_mut().unwrap().ingress_class_name = Some("portcullis".into());
        assert_eq!(ingress_class(&ing, &[ours]), ClassDecision::Ours { deprecated_annotation: false });
    }
}
