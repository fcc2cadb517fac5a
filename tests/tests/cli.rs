//! The `p2p` client's behaviour a user sees: help, and errors that say what
//! to do next.

use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions, random_file};

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_agent_says_how_to_start_it() {
    let port = p2p_tests::free_port();
    let output = tokio::process::Command::new(p2p_tests::binary("p2p"))
        .env_clear()
        .args(["--agent", &format!("127.0.0.1:{port}"), "ls"])
        .output()
        .await
        .expect("run p2p");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot reach the agent at 127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("is peer-agent running?"), "{stderr}");
    assert!(stderr.contains("P2P_AGENT"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_explains_every_command_with_examples() {
    for command in [
        "login", "logout", "ls", "share", "get", "cancel", "rm", "peers", "status", "users",
    ] {
        let output = tokio::process::Command::new(p2p_tests::binary("p2p"))
            .env_clear()
            .args([command, "--help"])
            .output()
            .await
            .expect("run p2p");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "p2p {command} --help failed");
        assert!(text.contains("Usage: p2p"), "{command}: {text}");
        if command != "users" {
            assert!(
                text.contains("Example"),
                "p2p {command} --help has no example:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_before_login_say_to_log_in() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster.add_agent("fresh", AgentOptions::default()).await;
    let output = a.p2p(&["ls"]).await;
    assert!(!output.success(), "{output}");
    assert!(
        output.stderr.contains("not logged in: run `p2p login`"),
        "{output}"
    );
    assert_eq!(output.code, Some(4), "{output}");

    let json = a.p2p(&["--json", "status"]).await.json();
    assert_eq!(json["logged_in"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_reported_as_such() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster.add_agent("fresh", AgentOptions::default()).await;
    let output = a
        .p2p_with_stdin(
            &["login", "admin", "--password-stdin"],
            Some("not-the-password\n"),
        )
        .await;
    assert_eq!(output.code, Some(4), "{output}");
    assert!(
        output.stderr.contains("wrong username or password"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_file_says_to_run_ls() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let dest = cluster.scratch_dir("out").join("x");
    let output = a
        .p2p(&["get", "no-such-file.bin", "-o", dest.to_str().unwrap()])
        .await;
    assert_eq!(output.code, Some(5), "{output}");
    assert!(
        output
            .stderr
            .contains("no file named no-such-file.bin: run `p2p ls`"),
        "{output}"
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_destination_is_refused_without_force_and_left_intact() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 700 * 1024, 5);
    let id = a.share(&original).await;
    let dest = cluster.scratch_dir("out").join("precious.txt");
    std::fs::write(&dest, b"do not overwrite me").unwrap();

    let refused = b.p2p(&["get", &id, "-o", dest.to_str().unwrap()]).await;
    assert_eq!(refused.code, Some(7), "{refused}");
    assert!(refused.stderr.contains("--force"), "{refused}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"do not overwrite me");

    b.p2p_ok(&["get", &id, "-o", dest.to_str().unwrap(), "--force"])
        .await;
    p2p_tests::assert_same_content(&original, &dest);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_peers_show_the_session_and_the_network() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let status = a.p2p_ok(&["status"]).await;
    assert!(status.stdout.contains("logged in as alice"), "{status}");
    let json = a.p2p_ok(&["--json", "status"]).await.json();
    assert_eq!(json["logged_in"], true);
    assert_eq!(json["user"]["username"], "alice");
    assert_eq!(json["advertise_addr"], a.peer_addr());

    let peers = a.p2p_ok(&["peers"]).await;
    assert!(peers.stdout.starts_with("PEER"), "{peers}");
    assert!(peers.stdout.contains(a.peer_addr()), "{peers}");
    assert!(peers.stdout.contains("online"), "{peers}");
}

/// Names with capitals beyond ASCII (Cyrillic, accented Latin, Greek) are
/// found by their exact name and by any-cased parts of it, on either
/// index backend.
async fn names_in_any_script_are_found_by_name_and_filter(options: ClusterOptions) {
    let cluster = Cluster::start(options).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let input = cluster.scratch_dir("input");
    for (seed, (name, filter)) in [
        ("Отчёт 2026.pdf", "Отчёт"),
        ("École d'été.txt", "ÉCOLE"),
        ("ÄRGER.md", "ärger"),
        ("ΦΩΤΟ ΟΔΟΣ.jpg", "οδοσ"),
    ]
    .into_iter()
    .enumerate()
    {
        let original = input.join(name);
        p2p_tests::write_random(&original, 64 * 1024, 40 + seed as u64);
        a.share(&original).await;

        let listed = b.p2p_ok(&["--json", "ls", filter]).await.json();
        assert_eq!(listed["files"][0]["name"], name, "ls {filter}: {listed}");
        let got = b.get(name, &cluster.scratch_dir("out").join(name)).await;
        p2p_tests::assert_same_content(&original, &got);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn names_in_any_script_are_found_on_sqlite() {
    names_in_any_script_are_found_by_name_and_filter(ClusterOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_in_any_script_are_found_on_postgres() {
    let Some(options) = ClusterOptions::postgres().await else {
        return;
    };
    names_in_any_script_are_found_by_name_and_filter(options).await;
}
