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
        certificates: Vec::new(),
        downstream_mtls: None,
        problems: Problems::default(),
        // The identity provider's keys land with the ProxyConfig fields for them.
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
