//! Hot reload: route changes swap atomically and touch no connection or in-flight stream;
//! an invalid edit is rejected with the last good config still serving.

// Test code measures wall time and may lock as it likes: the clippy.toml rules are for src/.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use portcullis::source::file::{self, FileSource};

#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn a_reload_in_the_middle_of_a_stream_does_not_break_it() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |up| format!("routes:\n - {{from: https://a.test, to: http://{up}}}\n");
    let r = start_in(dir.path(), &yaml(a)).await;
    let roots = [default_cert(&r)];
    let mut h1 = h1_tls(r.main, "localhost", &roots).await;
    let mut h2 = h2_tls(r.main, "localhost", &roots).await;
    let s1 = h1.send_request(get("a.test", "/stream?count=10&interval_ms=100")).await.unwrap();
    let s2 = h2.send_request(get2("a.test", "/sse?count=10&interval_ms=100")).await.unwrap();
    tokio::time::sleep(ms(300)).await;
    // Swap the route to upstream b while both streams are mid-flight.
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, with_ports(&yaml(b))).unwrap();
    let loaded = FileSource::new(&path).load_with_env(&|_| None).unwrap();
    r.proxy.apply(loaded.config);
    let b1 = s1.into_body().collect().await.expect("HTTP/1.1 stream survives the reload").to_bytes();
    let b2 = s2.into_body().collect().await.expect("HTTP/2 stream survives the reload").to_bytes();
    assert_eq!(b1.len(), 80);
    assert_eq!(String::from_utf8_lossy(&b2).matches("data: tick").count(), 10);
    // The same connections carry on, now to the new upstream.
    assert!(!h1.is_closed() && !h2.is_closed(), "a route change closes no connection");
    let (_, v) = json(h1.send_request(get("a.test", "/")).await.unwrap()).await;
    assert_eq!(v["upstream"], "b");
    let (_, v) = json(h2.send_request(get2("a.test", "/")).await.unwrap()).await;
    assert_eq!(v["upstream"], "b");
    let m = metrics(&r).await;
    assert!(m.contains("portcullis_downstream_connections_total{listener=\"https-ingress\"} 2"), "{m}");
}

#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn the_file_watcher_applies_edits_and_rejects_invalid_ones() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    let r = start_in(dir.path(), &format!("routes:\n - {{from: https://a.test, to: http://{a}}}\n")).await;
    let source = FileSource::new(&path);
    let proxy = r.proxy.clone();
    let loaded = source.load_with_env(&|_| None).unwrap();
    let watcher = file::watch(source, loaded.inputs, loaded.fingerprint, ms(100), move |res| match res {
        Ok(l) => {
            eprintln!("watcher: applying {} routes", l.config.routes.len());
            proxy.apply(l.config);
        }
        Err(e) => {
            eprintln!("watcher: rejected {e}");
            proxy.reject();
        }
    });

    let wait_for = |want: &'static str| {
        let r = &r;
        async move {
            for _ in 0..50 {
                let mut c = h1_tls(r.main, "localhost", &[default_cert(r)]).await;
                let (_, v) = json(c.send_request(get("a.test", "/")).await.unwrap()).await;
                if v["upstream"] == want {
                    return true;
                }
                tokio::time::sleep(ms(100)).await;
            }
            false
        }
    };
    std::fs::write(&path, with_ports(&format!("routes:\n - {{from: https://a.test, to: http://{b}}}\n"))).unwrap();
    assert!(wait_for("b").await, "the edit was applied");
    assert!(metrics(&r).await.contains("portcullis_config_last_reload_success 1"));

    std::fs::write(&path, with_ports("routes:\n - {from: https://a.test, to: ftp://nope, timeout: soon}\n")).unwrap();
    let mut rejected = false;
    for _ in 0..50 {
        if metrics(&r).await.contains("portcullis_config_last_reload_success 0") {
            rejected = true;
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert!(rejected, "an invalid edit sets portcullis_config_last_reload_success to 0");
    assert!(wait_for("b").await, "the last good config keeps serving");
    watcher.abort();
    tokio::time::sleep(Duration::ZERO).await;
}

/// What the controller relies on at 10,000 routes: a config that hands the same routes over
/// again (the same `Arc`s) recompiles only the ones that changed, and a setting a compiled
/// route reads (here the default upstream timeout) recompiles every route.
#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn a_reload_recompiles_only_the_routes_that_changed() {
    use portcullis::config::{Config, HostMatch};
    use portcullis::proxy::{CompiledRoute, Snapshot};
    use std::sync::Arc;

    let a = upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let r = start_in(
        dir.path(),
        &format!("routes:\n - {{from: https://a.test, to: http://{a}}}\n - {{from: https://b.test, to: http://{a}}}\n"),
    )
    .await;
    let route = |s: &Snapshot, host: &str| -> Arc<CompiledRoute> {
        s.routes.routes().iter().find(|c| c.route.host == HostMatch::Exact(host.into())).cloned().expect(host)
    };
    let before = r.proxy.snapshot();
    let mut config = Config {
        settings: before.settings.clone(),
        routes: before.routes.routes().iter().map(|c| c.route.clone()).collect(),
    };
    let b = config.routes.iter().position(|x| x.host == HostMatch::Exact("b.test".into())).unwrap();
    let mut edited = (*config.routes[b]).clone();
    edited.timeout = Some(Some(Duration::from_secs(5)));
    config.routes[b] = Arc::new(edited);
    r.proxy.apply(config.clone());
    let after = r.proxy.snapshot();
    assert!(Arc::ptr_eq(&route(&before, "a.test"), &route(&after, "a.test")), "unchanged: the same compiled route");
    assert!(!Arc::ptr_eq(&route(&before, "b.test"), &route(&after, "b.test")), "edited: compiled afresh");
    assert_eq!(route(&after, "b.test").upstream_timeout, Some(Duration::from_secs(5)));
    // The health registry leaves a reused route alone and redoes an edited one: both keep
    // their endpoint's series.
    let m = metrics(&r).await;
    for host in ["a.test", "b.test"] {
        let series = format!("portcullis_upstream_healthy{{route=\"{host}\",upstream=\"{a}\"}} 1");
        assert!(m.contains(&series), "{series} in\n{m}");
    }

    config.settings.default_upstream_timeout = Some(Duration::from_secs(7));
    r.proxy.apply(config);
    let last = r.proxy.snapshot();
    assert!(!Arc::ptr_eq(&route(&after, "a.test"), &route(&last, "a.test")), "a setting it reads changed");
    assert_eq!(route(&last, "a.test").upstream_timeout, Some(Duration::from_secs(7)));
    assert_eq!(route(&last, "b.test").upstream_timeout, Some(Duration::from_secs(5)), "its own timeout wins");
    for host in ["a.test", "b.test"] {
        let mut c = h1_tls(r.main, "localhost", &[default_cert(&r)]).await;
        let (status, v) = json(c.send_request(get(host, "/")).await.unwrap()).await;
        assert_eq!((status, v["upstream"].as_str()), (200, Some("a")), "{host} still serves");
    }
}
