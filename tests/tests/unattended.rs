//! Agents started with `--user`/`--password` (P2P_USER/P2P_PASSWORD) log
//! themselves in, however long auth-svc takes to be there, and say why
//! they are not logged in meanwhile.

use std::time::Duration;

use p2p_tests::AgentHandle as _;
use p2p_tests::{ADMIN_PASSWORD, ADMIN_USER, AgentOptions, Cluster, ClusterOptions, eventually};

fn unattended(user: &str, password: &str) -> AgentOptions {
    AgentOptions {
        env: vec![
            ("P2P_USER".into(), user.into()),
            ("P2P_PASSWORD".into(), password.into()),
        ],
        ..AgentOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unattended_agent_logs_in_once_auth_svc_comes_up() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.stop_auth();
    let a = cluster
        .add_agent("boot", unattended(ADMIN_USER, ADMIN_PASSWORD))
        .await;

    let json = eventually(
        Duration::from_secs(20),
        "status to report the failed unattended login",
        || async {
            let json = a.p2p_ok(&["--json", "status"]).await.json();
            json["login_error"].is_string().then_some(json)
        },
    )
    .await;
    assert_eq!(json["logged_in"], false, "{json}");
    let why = json["login_error"].as_str().unwrap();
    assert!(why.contains("auth service unreachable"), "{why}");
    assert!(why.contains("retrying in"), "{why}");
    let text = a.p2p_ok(&["status"]).await;
    assert!(
        text.stdout
            .contains("not logged in: unattended login as admin failed"),
        "{text}"
    );
    assert!(text.stdout.contains("retrying in"), "{text}");

    cluster.start_auth().await;
    eventually(
        Duration::from_secs(90),
        "the agent to log in by itself",
        || async {
            let json = a.p2p_ok(&["--json", "status"]).await.json();
            (json["logged_in"] == true && json["user"]["username"] == ADMIN_USER).then_some(())
        },
    )
    .await;
    let json = a.p2p_ok(&["--json", "status"]).await.json();
    assert!(json["login_error"].is_null(), "{json}");
    let text = a.p2p_ok(&["status"]).await;
    assert!(text.stdout.contains("logged in as admin"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_unattended_password_is_reported_and_a_manual_login_takes_over() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_agent("typo", unattended(ADMIN_USER, "not-the-password"))
        .await;
    let why = eventually(
        Duration::from_secs(20),
        "status to report the refused password",
        || async {
            let json = a.p2p_ok(&["--json", "status"]).await.json();
            json["login_error"].as_str().map(str::to_string)
        },
    )
    .await;
    assert!(why.contains("refused"), "{why}");
    assert!(why.contains("wrong --user or --password"), "{why}");
    assert!(why.contains("retrying in"), "{why}");

    a.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let json = a.p2p_ok(&["--json", "status"]).await.json();
    assert_eq!(json["logged_in"], true, "{json}");
    assert!(
        json["login_error"].is_null(),
        "the manual login stops the retries: {json}"
    );
}
