//! Active health checks take a failing upstream out of rotation and put it back.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use common::*;

#[tokio::test]
async fn an_upstream_failing_its_checks_gets_no_traffic_until_it_recovers() {
    let a = upstream("a").await;
    let b_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = b_listener.local_addr().unwrap();
    let b_task = tokio::spawn(portcullis::demo::serve(b_listener, "b"));
    let (r, _d) = start(&format!(
        "routes:
 - from: https://a.test
   to: [http://{a}, http://{b}]
   health_checks:
     - {{interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1, tcp_health_check: {{}}}}
"
    ))
    .await;
    let spread = |n| {
        let r = &r;
        async move {
            let mut seen = std::collections::HashMap::<String, usize>::new();
            for _ in 0..n {
                let (_, body) = https_get(r, "a.test", "/").await;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                *seen.entry(v["upstream"].as_str().unwrap_or("error").to_owned()).or_default() += 1;
            }
            seen
        }
    };
    let seen = spread(10).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5), "{seen:?}");

    b_task.abort();
    tokio::time::sleep(ms(600)).await;
    let seen = spread(10).await;
    assert_eq!(seen.get("a"), Some(&10), "b is out of rotation: {seen:?}");
    let m = metrics(&r).await;
    assert!(m.contains(&format!("portcullis_upstream_healthy{{route=\"a.test\",upstream=\"{b}\"}} 0")), "{m}");

    let b_again = tokio::net::TcpListener::bind(b).await.unwrap();
    tokio::spawn(portcullis::demo::serve(b_again, "b"));
    tokio::time::sleep(ms(600)).await;
    let seen = spread(10).await;
    assert!(seen.get("b").copied().unwrap_or(0) >= 4, "b is back: {seen:?}");
}
