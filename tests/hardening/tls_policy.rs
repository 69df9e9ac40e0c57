//! Downstream TLS policy seen by an independent client (Debian's `openssl s_client`): TLS 1.0
//! and 1.1 and non-AEAD suites are refused by the server, TLS 1.2 ECDHE-ECDSA-AES128-GCM and
//! TLS 1.3 are accepted.

use std::time::Duration;

use crate::common;

/// Runs `openssl s_client` against `addr` with `args`; exit success and the whole output.
async fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .args(["-servername", "localhost"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("openssl s_client finished within 15 s")
    .expect("openssl is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocols_and_weak_suites_are_refused() {
    let up = common::upstream("u").await;
    let (r, _d) = common::start(&format!("routes:\n - {{from: https://localhost, to: http://{up}}}\n")).await;
    let mut failures = Vec::new();
    for (name, args) in [
        ("TLS 1.0", &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"][..]),
        ("TLS 1.1", &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"][..]),
        ("TLS 1.2 AES128-SHA (CBC)", &["-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"][..]),
        ("TLS 1.2 ECDHE-ECDSA-AES128-SHA (CBC)", &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"][..]),
    ] {
        let (ok, out) = s_client(r.main, args).await;
        // "alert" in the output: the server answered with one, so the refusal is the server's
        // and not the local OpenSSL's.
        if ok || !out.contains("alert") {
            failures.push(format!("{name}: expected the server to refuse (success {ok}):\n{out}"));
        }
    }
    for (name, args, want) in [
        (
            "TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256",
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"][..],
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        ("TLS 1.3", &["-tls1_3"][..], "TLSv1.3"),
    ] {
        let (ok, out) = s_client(r.main, args).await;
        if !ok || !out.contains(want) {
            failures.push(format!("{name}: expected a handshake (success {ok}):\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
