//! The 20-criterion policy of `policy_20.yaml` and an identity it reads, shared by the
//! benchmark (`benches/policy_eval.rs`) and the allocation test (`tests/alloc.rs`).

use portcullis::policy::eval::{Facts, Identity};
use portcullis::policy::Policy;

/// The parsed policy.
pub fn policy() -> Policy {
    let tree: serde_json::Value = serde_yaml_ng::from_str(include_str!("../policy_20.yaml")).expect("YAML");
    let mut errs = portcullis::config::errors::Errors::default();
    portcullis::policy::parse::policy("policy", &tree, &mut errs).expect("a valid policy")
}

/// A user in engineering, as a verified token would name them.
pub fn identity() -> Identity {
    let claims = serde_json::json!({"sub": "u-1", "email": "dev@example.com", "groups": ["engineering"],
        "department": "platform", "role": "member"});
    Identity {
        subject: Some("u-1".into()),
        email: Some("dev@example.com".into()),
        groups: vec!["engineering".into()],
        claims: claims.as_object().expect("an object").clone(),
    }
}

/// A request from `identity` at `now`, from 10.1.2.3, with no client certificate.
pub fn facts<'a>(identity: &'a Identity, method: &'a str, path: &'a str, now: jiff::Timestamp) -> Facts<'a> {
    Facts {
        identity: Some(identity),
        method,
        path,
        source_ip: "10.1.2.3".parse().expect("an IP"),
        client_cert: None,
        invalid_client_cert: false,
        cors_preflight: false,
        now,
    }
}
