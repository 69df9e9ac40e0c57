//! Access policy on the request path, over real sockets: a route's policy decides every
//! request; refused without an identity is 401 with `WWW-Authenticate: Bearer`, a route
//! without a policy stays public. (Bearer tokens and the identity provider: next.)

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;
use common::*;

#[tokio::test]
async fn a_policy_decides_every_request_and_deny_wins() {
    let up = upstream("u").await;
    let (r, _d) = start(&format!(
        "routes:
 - from: https://open.test
   to: http://{up}
 - from: https://app.test
   to: http://{up}
   policy:
     - allow: {{or: [{{http_path: {{starts_with: /public/}}}}, {{source_ip: 127.0.0.0/8}}]}}
     - deny: {{and: [{{http_method: DELETE}}]}}
 - from: https://users.test
   to: http://{up}
   allowed_users: [alice@example.com]
"
    ))
    .await;
    let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
    // No policy: public, as before.
    assert_eq!(text(c.send_request(get("open.test", "/x")).await.unwrap()).await.0, 200);
    // The loopback client is allowed by source_ip; DELETE is denied whatever else matches.
    assert_eq!(text(c.send_request(get("app.test", "/private")).await.unwrap()).await.0, 200);
    let mut del = get("app.test", "/public/a");
    *del.method_mut() = http::Method::DELETE;
    let resp = c.send_request(del).await.unwrap();
    assert_eq!(resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    let (status, body) = text(resp).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("sign in to use this route") && body.contains("request id:"), "{body}");
    assert!(!body.contains("DELETE") && !body.contains("allow"), "the page never shows the policy: {body}");
    // Shorthand keys: only alice, and no request here has an identity yet.
    assert_eq!(text(c.send_request(get("users.test", "/")).await.unwrap()).await.0, 401);
}
