//! Who may drive an agent: only the user it runs as, through its 0600 Unix
//! socket, or whoever holds its control token on the TCP listener.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use p2p_proto::agent::v1::StatusRequest;
use p2p_proto::agent::v1::agent_control_client::AgentControlClient;
use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions};

/// `nobody` on most systems.
const OTHER_UID: u32 = 65534;

/// Why the test that switches users cannot run, or `None` when it can.
/// Under `CI=true` not being root is a failure, not a skip.
fn not_root_reason() -> Option<String> {
    if rustix::process::geteuid().is_root() {
        return None;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "the control socket test must run as root in CI");
    Some("not running as root, so cannot run p2p as another user".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn another_local_user_cannot_use_the_agents_socket() {
    if let Some(reason) = not_root_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;

    let meta = std::fs::symlink_metadata(a.control_socket()).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw(), "owner");

    // Let the other user walk to the socket, so only its own mode stops
    // them (the temp dir is 0700 otherwise).
    std::fs::set_permissions(cluster.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(a.data_dir(), std::fs::Permissions::from_mode(0o711)).unwrap();

    let mut other = a.p2p_command(&["status"]);
    other.uid(OTHER_UID).gid(OTHER_UID);
    let output = other.output().await.expect("run p2p as another user");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        stderr.contains("this agent belongs to another user"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("alice"),
        "the other user saw the session"
    );

    let mine = a.p2p_ok(&["status"]).await;
    assert!(mine.stdout.contains("logged in as alice"), "{mine}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_socket_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(p2p_tests::binary("p2p"))
        .env_clear()
        .env("P2P_DATA_DIR", dir.path())
        .args(["status"])
        .output()
        .await
        .expect("run p2p");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let socket = dir.path().join("control.sock");
    assert!(
        stderr.contains(&format!("no control socket at {}", socket.display())),
        "{stderr}"
    );
    assert!(stderr.contains("P2P_DATA_DIR"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_control_needs_the_token_file() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().tcp_control())
        .await;
    let addr = a.control_tcp_addr().expect("a TCP control listener");
    let token_file = a.control_token_file();
    let mode = std::fs::metadata(&token_file).expect("token file").mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode");

    let channel =
        p2p_services::client::channel(addr, &p2p_services::tls::ClientTls::Plaintext).unwrap();
    let refused = AgentControlClient::new(channel.clone())
        .status(StatusRequest {})
        .await
        .expect_err("a call without the token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&token_file.display().to_string()),
        "the refusal names the token file: {}",
        refused.message()
    );
    let wrong = AgentControlClient::new(channel.clone())
        .status(p2p_services::client::with_bearer(
            StatusRequest {},
            "not-the-token",
        ))
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);

    let token = std::fs::read_to_string(&token_file).unwrap();
    let status = AgentControlClient::new(channel)
        .status(p2p_services::client::with_bearer(
            StatusRequest {},
            token.trim(),
        ))
        .await
        .expect("the token opens the API")
        .into_inner();
    assert!(status.logged_in);

    // p2p over TCP: the token from the data dir, from a named file, or none.
    let with_data_dir = a.p2p(&["--agent", addr, "status"]).await;
    assert!(with_data_dir.success(), "{with_data_dir}");
    assert!(with_data_dir.stdout.contains("logged in as alice"));

    let elsewhere = tempfile::tempdir().unwrap();
    let run_without_data_dir = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(p2p_tests::binary("p2p"));
        command
            .env_clear()
            .env("P2P_DATA_DIR", elsewhere.path())
            .args(args);
        command
    };
    let named = run_without_data_dir(vec![
        "--agent".into(),
        addr.into(),
        "--agent-token-file".into(),
        token_file.display().to_string(),
        "status".into(),
    ])
    .output()
    .await
    .unwrap();
    assert!(
        named.status.success(),
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );

    let without = run_without_data_dir(vec!["--agent".into(), addr.into(), "ls".into()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("control token"), "{stderr}");
    assert!(
        stderr.contains(&token_file.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("--agent-token-file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_goes_away_when_the_agent_stops_cleanly() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut a = cluster.add_agent("alice", AgentOptions::default()).await;
    let socket = a.control_socket().to_path_buf();
    assert!(socket.exists());
    a.terminate().await;
    assert!(
        !socket.exists(),
        "the socket outlived a clean shutdown (SIGTERM)"
    );
    // A crash leaves it behind; the next start replaces the stale socket.
    a.restart().await;
    a.kill();
    assert!(socket.exists());
    a.restart().await;
    a.p2p_ok(&["status"]).await;
}
