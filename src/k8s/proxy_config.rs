//! The `ProxyConfig` custom resource as global settings, with the environment's overrides
//! laid over it; certificate and CA Secrets are resolved here (the validator sees PEM).

use super::objects::{secret_pem, secret_value, tls_certificate, Objects};
use super::translate::SpecNames;
use crate::config::input::{Given, MtlsInput, Problems, SettingsInput};
use crate::config::validate::{self, Errors};
use crate::config::FieldError;
use crate::source::env::EnvOverrides;

/// The key of `spec.idpClientSecretRef` when it names none.
pub const DEFAULT_CLIENT_SECRET_KEY: &str = "client-secret";
/// The key of `spec.cookieSecretRef` when it names none.
pub const DEFAULT_COOKIE_SECRET_KEY: &str = "cookie-secret";
/// The key of `spec.signingKeySecretRef` when it names none.
pub const DEFAULT_SIGNING_KEY_KEY: &str = "signing-key";

/// Translates the `ProxyConfig` into global settings; certificate and CA Secrets default to
/// the controller's namespace. `overrides` (from the environment) replace the spec's values.
pub fn translate_proxy_config(
    pc: &crate::k8s::crd::ProxyConfig,
    objects: &Objects,
    default_ns: &str,
    overrides: &EnvOverrides,
) -> Result<crate::config::Settings, Vec<FieldError>> {
    let mut errs = Errors::default();
    let mut input = settings_input(&pc.spec);
    // The sign-in Secrets, before the environment's overrides (which win over them too).
    // Their values are never quoted: an error names the reference, the Secret and the key.
    let refs = [
        (
            &pc.spec.idp_client_secret_ref,
            "spec.idpClientSecretRef",
            DEFAULT_CLIENT_SECRET_KEY,
            &mut input.idp_client_secret,
        ),
        (&pc.spec.cookie_secret_ref, "spec.cookieSecretRef", DEFAULT_COOKIE_SECRET_KEY, &mut input.cookie_secret),
        (&pc.spec.signing_key_secret_ref, "spec.signingKeySecretRef", DEFAULT_SIGNING_KEY_KEY, &mut input.signing_key),
    ];
    for (reference, field, default_key, slot) in refs {
        let Some(r) = reference else { continue };
        let ns = r.namespace.as_deref().unwrap_or(default_ns);
        match secret_value(ns, &r.name, r.key.as_deref().unwrap_or(default_key), objects) {
            Ok(value) => *slot = Some(value),
            Err(e) => errs.push(field, e),
        }
    }
    // The environment's settings win (see `source::env`); they were validated at start, so
    // they cannot be the cause of an error reported on the ProxyConfig.
    input.overlay(overrides.settings());
    // Secret references are resolved here; the validator sees PEM.
    let mut certificates = Vec::new();
    for (i, c) in pc.spec.certificates.iter().flatten().enumerate() {
        let ns = c.namespace.as_deref().unwrap_or(default_ns);
        match tls_certificate(ns, &c.name, objects) {
            Ok(cert) => certificates.push(cert),
            Err(e) => errs.push(format!("spec.certificates[{i}]"), e),
        }
    }
    if let Some(m) = &pc.spec.downstream_mtls {
        use crate::config::MtlsEnforcement as Mode;
        use crate::k8s::crd::MtlsEnforcement;
        let ns = m.ca_secret.namespace.as_deref().unwrap_or(default_ns);
        let ca = secret_pem(ns, &m.ca_secret.name, "ca.crt", objects)
            .map_err(|e| errs.push("spec.downstreamMtls.caSecret", e))
            .ok();
        input.downstream_mtls = Some(MtlsInput {
            ca,
            crl: secret_pem(ns, &m.ca_secret.name, "ca.crl", objects).ok(),
            enforcement: m.enforcement.map(|e| {
                Given::Parsed(match e {
                    MtlsEnforcement::PolicyWithDefaultDeny => Mode::PolicyWithDefaultDeny,
                    MtlsEnforcement::Policy => Mode::Policy,
                    MtlsEnforcement::RejectConnection => Mode::RejectConnection,
                })
            }),
            max_verify_depth: m.max_verify_depth.map(u64::from),
            problems: Problems::default(),
        });
    }
    if let Some(r) = &pc.spec.idp_ca_secret {
        let ns = r.namespace.as_deref().unwrap_or(default_ns);
        match secret_pem(ns, &r.name, "ca.crt", objects) {
            Ok(pem) => input.idp_ca = Some(pem),
            Err(e) => errs.push("spec.idpCaSecret", e),
        }
    }
    let mut settings = validate::settings(&input, &SpecNames, &mut errs);
    settings.certificates = certificates;
    if errs.is_empty() {
        Ok(settings)
    } else {
        Err(errs.into_vec())
    }
}

/// The scalar global settings of a ProxyConfig spec, typed as the CRD already types them.
fn settings_input(spec: &crate::k8s::crd::ProxyConfigSpec) -> SettingsInput {
    use crate::config::{CodecType, DrainScope};
    use crate::k8s::crd;
    let text = |v: &Option<String>| v.clone().map(Given::Text);
    SettingsInput {
        address: spec.address.clone(),
        http_redirect_address: spec.http_redirect_address.clone(),
        metrics_address: spec.metrics_address.clone(),
        admin_address: spec.admin_address.clone(),
        insecure_server: spec.insecure_server,
        codec_type: spec.codec_type.map(|c| {
            Given::Parsed(match c {
                crd::CodecType::Auto => CodecType::Auto,
                crd::CodecType::Http1 => CodecType::Http1,
                crd::CodecType::Http2 => CodecType::Http2,
                crd::CodecType::Http3 => CodecType::Http3,
            })
        }),
        http3_advertised_port: spec.http3_advertised_port.map(u64::from),
        timeout_read: text(&spec.timeout_read),
        timeout_write: text(&spec.timeout_write),
        timeout_idle: text(&spec.timeout_idle),
        default_upstream_timeout: text(&spec.default_upstream_timeout),
        drain_timeout: text(&spec.drain_timeout),
        drain_scope: spec.drain_scope.map(|d| {
            Given::Parsed(match d {
                crd::DrainScope::Affected => DrainScope::Affected,
                crd::DrainScope::All => DrainScope::All,
            })
        }),
        idp_provider_url: spec.idp_provider_url.clone(),
        idp_client_id: spec.idp_client_id.clone(),
        jwks_url: spec.jwks_url.clone(),
        jwt_audiences: spec.jwt_audiences.clone(),
        jwt_leeway: text(&spec.jwt_leeway),
        idp_scopes: spec.idp_scopes.clone(),
        authenticate_service_url: spec.authenticate_service_url.clone(),
        cookie_name: spec.cookie_name.clone(),
        cookie_expire: text(&spec.cookie_expire),
        pass_identity_headers: spec.pass_identity_headers,
        jwt_claims_headers: spec
            .jwt_claims_headers
            .as_ref()
            .map(|m| m.iter().map(|(h, c)| (h.clone(), c.clone())).collect()),
        // Secret references are resolved by the caller.
        idp_ca: None,
        certificates: Vec::new(),
        downstream_mtls: None,
        idp_client_secret: None,
        cookie_secret: None,
        signing_key: None,
        problems: Problems::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::test_support::*;

    #[test]
    fn proxy_config_becomes_settings() {
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(
            serde_json::json!({"timeoutIdle": "1m", "codecType": "http1", "address": ":9443", "drainScope": "all"}),
        )
        .unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let s = translate_proxy_config(&pc, &objects(), "portcullis", &EnvOverrides::default()).unwrap();
        assert_eq!(s.timeouts.idle, Some(std::time::Duration::from_secs(60)));
        assert_eq!(s.address.port(), 9443);
        assert_eq!(s.codec_type, crate::config::CodecType::Http1);
        assert_eq!(s.drain_scope, crate::config::DrainScope::All);
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(serde_json::json!({
            "timeoutRead": "10x",
            "certificates": [{"name": "nope"}],
        }))
        .unwrap();
        let errs = translate_proxy_config(
            &crate::k8s::crd::ProxyConfig::new("global", spec),
            &objects(),
            "portcullis",
            &EnvOverrides::default(),
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"spec.certificates[0]: Secret portcullis/nope not found".to_owned()), "{text:?}");
        assert!(text.iter().any(|e| e.starts_with("spec.timeoutRead: invalid duration")), "{text:?}");
    }

    #[test]
    fn identity_provider_fields_become_the_identity_provider() {
        let ca = rcgen::generate_simple_self_signed(vec!["idp.test".to_owned()]).unwrap();
        let mut o = objects();
        o.secrets.insert(
            ("portcullis".into(), "idp-ca".into()),
            k8s_openapi::api::core::v1::Secret {
                metadata: meta("portcullis", "idp-ca"),
                data: Some([("ca.crt".to_owned(), k8s_openapi::ByteString(ca.cert.pem().into_bytes()))].into()),
                ..Default::default()
            }
            .into(),
        );
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(serde_json::json!({
            "idpProviderUrl": "https://idp.test/realms/r",
            "idpClientId": "portcullis",
            "jwksUrl": "https://idp.test/keys",
            "jwtAudiences": ["api", "portcullis"],
            "jwtLeeway": "5s",
            "idpCaSecret": {"name": "idp-ca"},
        }))
        .unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let s = translate_proxy_config(&pc, &o, "portcullis", &EnvOverrides::default()).unwrap();
        let idp = s.identity_provider.unwrap();
        assert_eq!(idp.issuer, "https://idp.test/realms/r");
        assert_eq!(idp.client_id.as_deref(), Some("portcullis"));
        assert_eq!(idp.jwks_url.map(|u| u.to_string()).as_deref(), Some("https://idp.test/keys"));
        assert_eq!(idp.audiences, ["portcullis", "api"], "the client id first, no repeats");
        assert_eq!(idp.leeway, std::time::Duration::from_secs(5));
        assert_eq!(idp.ca.len(), 1);
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(serde_json::json!({
            "idpProviderUrl": "http://idp.test",
            "jwtLeeway": "soon",
            "idpCaSecret": {"name": "missing"},
        }))
        .unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let errs: Vec<String> = translate_proxy_config(&pc, &o, "portcullis", &EnvOverrides::default())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "spec.idpCaSecret: Secret portcullis/missing not found",
            "spec.idpProviderUrl: ",
            "spec.jwtLeeway: ",
            "spec.idpClientId: ",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
        }
        let spec: crate::k8s::crd::ProxyConfigSpec =
            serde_json::from_value(serde_json::json!({"jwksUrl": "https://idp.test/keys"})).unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let errs = translate_proxy_config(&pc, &o, "portcullis", &EnvOverrides::default()).unwrap_err();
        assert_eq!(errs[0].path, "spec.jwksUrl", "needs idpProviderUrl: {errs:?}");
    }

    /// The sign-in Secrets of the chart (`cookie-secret`, `signing-key`) and the provider's
    /// client secret under its own key, in another namespace.
    fn sign_in_objects() -> (Objects, String, String) {
        use base64::Engine as _;
        let cookie = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let mut o = objects();
        let ours = secret(
            "portcullis",
            "portcullis-sign-in",
            &[("cookie-secret", cookie.as_bytes()), ("signing-key", key.as_bytes())],
        );
        o.secrets.insert(("portcullis".into(), "portcullis-sign-in".into()), ours.into());
        let idp = secret("idp", "oidc-client", &[("secret", b"portcullis-secret\n")]);
        o.secrets.insert(("idp".into(), "oidc-client".into()), idp.into());
        (o, cookie, key)
    }

    fn sign_in_spec(extra: &serde_json::Value) -> crate::k8s::crd::ProxyConfig {
        let mut spec = serde_json::json!({
            "idpProviderUrl": "https://idp.test",
            "idpClientId": "portcullis",
            "idpClientSecretRef": {"name": "oidc-client", "namespace": "idp", "key": "secret"},
            "cookieSecretRef": {"name": "portcullis-sign-in"},
            "signingKeySecretRef": {"name": "portcullis-sign-in"},
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                spec.as_object_mut().unwrap().remove(k);
            } else {
                spec[k] = v.clone();
            }
        }
        crate::k8s::crd::ProxyConfig::new("global", serde_json::from_value(spec).unwrap())
    }

    fn error_texts(pc: &crate::k8s::crd::ProxyConfig, o: &Objects) -> Vec<String> {
        translate_proxy_config(pc, o, "portcullis", &EnvOverrides::default())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn sign_in_fields_and_secrets_become_the_sign_in_settings() {
        let (o, _, _) = sign_in_objects();
        let pc = sign_in_spec(&serde_json::json!({
            "idpScopes": ["openid", "email", "groups"],
            "authenticateServiceUrl": "https://auth.example.com:8443",
            "cookieName": "_pc",
            "cookieExpire": "8h",
            "passIdentityHeaders": false,
            "jwtClaimsHeaders": {"X-Email": "email", "X-Groups": "groups"},
        }));
        let s = translate_proxy_config(&pc, &o, "portcullis", &EnvOverrides::default()).unwrap();
        let sign_in = s.identity_provider.unwrap().sign_in.expect("sign-in is on with a client secret");
        assert_eq!(sign_in.client_secret.0, "portcullis-secret", "trimmed");
        assert_eq!(sign_in.scopes, ["openid", "email", "groups"]);
        assert_eq!(sign_in.authenticate_url.map(|u| u.origin()).as_deref(), Some("https://auth.example.com:8443"));
        assert_eq!(sign_in.cookie_name, "_pc");
        assert_eq!(sign_in.cookie_secret.0, [7u8; 32]);
        assert_eq!(sign_in.cookie_expire, std::time::Duration::from_secs(8 * 3600));
        let ids = s.identity_headers;
        assert!(ids.signing_key.is_some(), "the PEM became PKCS#8");
        assert_eq!(ids.pass, Some(false));
        let headers: Vec<(&str, &str)> = ids.claims_headers.iter().map(|(h, c)| (h.as_str(), c.as_str())).collect();
        assert_eq!(headers, [("x-email", "email"), ("x-groups", "groups")]);
        // Defaults: the design's scopes, cookie and lifetime.
        let s =
            translate_proxy_config(&sign_in_spec(&serde_json::json!({})), &o, "portcullis", &EnvOverrides::default())
                .unwrap();
        let sign_in = s.identity_provider.unwrap().sign_in.unwrap();
        assert_eq!(sign_in.scopes, ["openid", "profile", "email", "offline_access"]);
        assert_eq!(sign_in.cookie_name, "_portcullis");
        assert_eq!(sign_in.cookie_expire, std::time::Duration::from_secs(14 * 3600));
        assert!(sign_in.authenticate_url.is_none());
    }

    #[test]
    fn missing_sign_in_secrets_name_the_reference() {
        let (o, _, _) = sign_in_objects();
        let pc = sign_in_spec(&serde_json::json!({
            "idpClientSecretRef": {"name": "oidc-client", "namespace": "idp"},
            "cookieSecretRef": {"name": "nope"},
            "signingKeySecretRef": {"name": "portcullis-sign-in", "key": "other"},
        }));
        let errs = error_texts(&pc, &o);
        for want in [
            "spec.idpClientSecretRef: Secret idp/oidc-client has no \"client-secret\" key",
            "spec.cookieSecretRef: Secret portcullis/nope not found",
            "spec.signingKeySecretRef: Secret portcullis/portcullis-sign-in has no \"other\" key",
        ] {
            assert!(errs.iter().any(|e| e == want), "{want}: {errs:?}");
        }
        // Sign-in needs a cookie secret; the cookie keys alone need the client secret.
        let errs = error_texts(&sign_in_spec(&serde_json::json!({"cookieSecretRef": null})), &o);
        assert!(errs.iter().any(|e| e.starts_with("spec.cookieSecretRef: is required for sign-in")), "{errs:?}");
        let errs = error_texts(&sign_in_spec(&serde_json::json!({"idpClientSecretRef": null})), &o);
        assert!(errs.iter().any(|e| e.starts_with("spec.cookieSecretRef: needs spec.idpClientSecretRef")), "{errs:?}");
        let errs = error_texts(&sign_in_spec(&serde_json::json!({"idpClientId": null, "cookieExpire": "soon"})), &o);
        assert!(errs.iter().any(|e| e.starts_with("spec.idpClientId: is required for sign-in")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("spec.cookieExpire: ")), "{errs:?}");
        let errs = error_texts(
            &sign_in_spec(
                &serde_json::json!({"authenticateServiceUrl": "http://auth.test", "jwtClaimsHeaders": {"Host": "email"}}),
            ),
            &o,
        );
        assert!(errs.iter().any(|e| e.starts_with("spec.authenticateServiceUrl: ")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("spec.jwtClaimsHeaders.Host: ")), "{errs:?}");
    }

    /// A wrong secret is reported by the reference it came from, and its value appears in no
    /// error (errors reach the ProxyConfig's status, Events and the log).
    #[test]
    fn bad_secret_values_are_never_quoted() {
        let (mut o, cookie, key) = sign_in_objects();
        let short = "c2hvcnQtYnV0LXNlY3JldC12YWx1ZQ==";
        let not_key = "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LWF0LWFsbC1zZWNyZXQ=\n-----END PRIVATE KEY-----\n";
        let bad = secret(
            "portcullis",
            "bad",
            &[("cookie-secret", short.as_bytes()), ("signing-key", not_key.as_bytes()), ("client-secret", b"  ")],
        );
        o.secrets.insert(("portcullis".into(), "bad".into()), bad.into());
        let pc = sign_in_spec(&serde_json::json!({
            "idpClientSecretRef": {"name": "bad"},
            "cookieSecretRef": {"name": "bad"},
            "signingKeySecretRef": {"name": "bad"},
        }));
        let errs = error_texts(&pc, &o);
        for field in ["spec.idpClientSecretRef: ", "spec.cookieSecretRef: ", "spec.signingKeySecretRef: "] {
            assert!(errs.iter().any(|e| e.starts_with(field)), "{field}: {errs:?}");
        }
        for e in &errs {
            for value in [short, "c2hvcnQ", "bm90LWEta2V5", &cookie, &key] {
                assert!(!e.contains(value), "{e} quotes a secret");
            }
        }
    }

    #[test]
    fn environment_overrides_win_over_the_spec() {
        let spec: crate::k8s::crd::ProxyConfigSpec = serde_json::from_value(
            serde_json::json!({"address": ":9443", "adminAddress": "127.0.0.1:1", "timeoutIdle": "1m"}),
        )
        .unwrap();
        let pc = crate::k8s::crd::ProxyConfig::new("global", spec);
        let overrides = crate::source::env::env_overrides(&|k| match k {
            "ADDRESS" => Some(":8443".into()),
            "ADMIN_ADDRESS" => Some(":9901".into()),
            _ => None,
        })
        .unwrap();
        let s = translate_proxy_config(&pc, &objects(), "portcullis", &overrides).unwrap();
        assert_eq!(s.address.port(), 8443);
        assert_eq!(s.admin_address.map(|a| a.to_string()), Some("0.0.0.0:9901".to_owned()));
        assert_eq!(s.timeouts.idle, Some(std::time::Duration::from_secs(60)), "the rest of the spec still applies");
        let errs =
            crate::source::env::env_overrides(&|k| (k == "METRICS_ADDRESS").then(|| "nowhere".into())).unwrap_err();
        assert_eq!(errs.0[0].path, "METRICS_ADDRESS", "{errs}");
        assert!(errs.0[0].message.starts_with("environment variable: "), "{errs}");
    }
}
