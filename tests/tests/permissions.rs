//! Who may remove what: a file leaves the network only at its owner's (or
//! an admin's) request.

use p2p_tests::AgentHandle as _;
use std::time::Duration;

use p2p_tests::{AgentOptions, Cluster, ClusterOptions, eventually, random_file};

#[tokio::test(flavor = "multi_thread")]
async fn network_removal_is_refused_to_others_and_done_for_the_owner() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 300 * 1024, 4);
    let id = a.share(&original).await;

    let refused = b.p2p(&["rm", &id, "--network"]).await;
    assert_eq!(refused.code, Some(6), "{refused}");
    assert!(refused.stderr.contains("permission denied"), "{refused}");
    assert!(
        b.network_file(&id).await.is_some(),
        "the file vanished after a refused removal"
    );

    a.p2p_ok(&["rm", &id, "--network"]).await;
    eventually(
        Duration::from_secs(10),
        "the file to leave the network",
        || async { b.network_file(&id).await.is_none().then_some(()) },
    )
    .await;
    assert!(
        original.exists(),
        "removing from the network deleted the user's original file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_manage_accounts_through_the_cli() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let refused = b
        .p2p_with_stdin(
            &["users", "add", "mallory", "--password-stdin"],
            Some("long-enough-pass\n"),
        )
        .await;
    assert_eq!(refused.code, Some(6), "{refused}");
    assert!(refused.stderr.contains("only admins"), "{refused}");

    let admin = cluster
        .add_agent("admin-agent", AgentOptions::default())
        .await;
    admin
        .login(p2p_tests::ADMIN_USER, p2p_tests::ADMIN_PASSWORD)
        .await;
    admin
        .p2p_with_stdin(
            &["users", "add", "dave", "--password-stdin"],
            Some("long-enough-pass\n"),
        )
        .await;
    let users = admin.p2p_ok(&["--json", "users", "ls"]).await.json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert!(names.contains(&"dave"), "{users}");
    admin.p2p_ok(&["users", "rm", "dave"]).await;
    let missing = admin.p2p(&["users", "rm", "dave"]).await;
    assert_eq!(missing.code, Some(5), "{missing}");
    assert!(missing.stderr.contains("no user named dave"), "{missing}");
}
