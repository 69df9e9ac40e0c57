//! The `ProxyConfig` custom resource as global settings, with the environment's overrides
//! laid over it; certificate and CA Secrets are resolved here (the validator sees PEM).

use super::objects::{secret_pem, tls_certificate, Objects};
use super::translate::SpecNames;
use crate::config::input::{Given, MtlsInput, Problems, SettingsInput};
use crate::config::validate::{self, Errors};
use crate::config::FieldError;
use crate::source::env::EnvOverrides;

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
        // Secret references are resolved by the caller.
        idp_ca: None,
        certificates: Vec::new(),
        downstream_mtls: None,
        // Sign-in arrives with the ProxyConfig's Secret references (next).
        ..SettingsInput::default()
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
