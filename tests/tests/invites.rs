//! Invites and join tokens through the whole stack: `p2p` to the agent's
//! control API, the agent to auth-svc's EnrollmentService, and back.

use p2p_services::invite::Invite;
use p2p_tests::{ADMIN_PASSWORD, ADMIN_USER, AgentHandle, AgentOptions, Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_invites_machines_and_manages_their_join_tokens_with_p2p() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.create_user("printer", false).await;
    let admin = cluster.add_agent("admin", AgentOptions::default()).await;
    admin.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let (ca, _) = cluster.certs().ensure_ca().expect("the cluster's CA");
    let fingerprint = ca.fingerprint().expect("the CA's fingerprint");

    // Without a token: where auth-svc is and which CA to trust.
    let plain = admin.p2p_ok(&["--json", "invite"]).await.json();
    let invite = Invite::parse(plain["invite"].as_str().expect("invite text")).expect("valid");
    assert_eq!(invite.server, cluster.auth_addr());
    assert_eq!(invite.fingerprint, fingerprint);
    assert_eq!(invite.token, None);
    assert!(plain["token"].is_null(), "{plain}");

    // With a token for an unattended machine.
    let made = admin
        .p2p_ok(&[
            "--json",
            "invite",
            "--token-for",
            "printer",
            "--uses",
            "3",
            "--expires",
            "2h",
            "--description",
            "lab printers",
        ])
        .await
        .json();
    let invite = Invite::parse(made["invite"].as_str().expect("invite text")).expect("valid");
    assert!(
        invite
            .token
            .as_deref()
            .is_some_and(|t| t.starts_with("p2pjt_")),
        "{invite:?}"
    );
    let token = &made["token"];
    assert_eq!(token["username"], "printer");
    assert_eq!(
        (token["uses"].as_u64(), token["uses_left"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(token["created_by"], ADMIN_USER);
    assert_eq!(token["state"], "active");
    let id = token["id"].as_str().expect("token id").to_string();
    let text = admin.p2p_ok(&["invite", "--token-for", "printer"]).await;
    assert!(text.stdout.contains("p2p join 'p2p-invite:"), "{text}");
    assert!(text.stdout.contains("Warning: 127.0.0.1"), "{text}");

    let listed = admin.p2p_ok(&["--json", "join-tokens"]).await.json();
    let tokens = listed["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2, "{listed}");
    assert_eq!(tokens[1]["id"], id.as_str(), "newest first: {listed}");
    assert_eq!(tokens[1]["description"], "lab printers");

    admin.p2p_ok(&["join-tokens", "revoke", &id]).await;
    admin.p2p_ok(&["join-tokens", "revoke", &id]).await;
    let table = admin.p2p_ok(&["join-tokens"]).await;
    let row = table
        .stdout
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {table}"));
    assert!(row.contains("revoked") && row.contains("3/3"), "{row}");

    let unknown = admin
        .p2p(&["join-tokens", "revoke", "0000000000000000"])
        .await;
    assert_eq!(unknown.code, Some(5), "{unknown}");
    let nobody = admin.p2p(&["invite", "--token-for", "nobody"]).await;
    assert_eq!(nobody.code, Some(5), "{nobody}");
    assert!(nobody.stderr.contains("no user named nobody"), "{nobody}");
    let too_many = admin
        .p2p(&["invite", "--token-for", "printer", "--uses", "1001"])
        .await;
    assert_eq!(too_many.code, Some(1), "{too_many}");
    assert!(too_many.stderr.contains("1 to 1000"), "{too_many}");

    // Someone who is not an admin gets neither invites with tokens nor the list.
    let user = cluster.add_user_agent("bob", AgentOptions::default()).await;
    for args in [
        &["invite", "--token-for", "printer"][..],
        &["join-tokens"][..],
        &["join-tokens", "revoke", &id][..],
    ] {
        let out = user.p2p(args).await;
        assert_eq!(out.code, Some(6), "{args:?}: {out}");
        assert!(out.stderr.contains("only admins"), "{out}");
    }
}

/// Runs `p2p --json join INVITE` for a new machine whose agent's data dir
/// is `data_dir` (no agent runs there yet).
async fn join(data_dir: &std::path::Path, invite: &str) -> p2p_tests::CliOutput {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(p2p_tests::binary("p2p"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--json", "--data-dir"])
            .arg(data_dir)
            .args(["join", invite])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("p2p join finished in time")
    .expect("run p2p join");
    p2p_tests::CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_joins_as_many_machines_as_it_has_uses_until_revoked() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.create_user("printer", false).await;
    let admin = cluster.add_agent("admin", AgentOptions::default()).await;
    admin.login(ADMIN_USER, ADMIN_PASSWORD).await;
    let invite_for = |uses: &'static str| {
        let admin = &admin;
        async move {
            let made = admin
                .p2p_ok(&["--json", "invite", "--token-for", "printer", "--uses", uses])
                .await
                .json();
            (
                made["invite"].as_str().expect("invite").to_string(),
                made["token"]["id"].as_str().expect("id").to_string(),
            )
        }
    };

    let (invite, _) = invite_for("1").await;
    let first = join(&cluster.scratch_dir("machine-1"), &invite).await;
    assert!(first.success(), "{first}");
    assert_eq!(first.json()["user"], "printer", "{first}");
    let second = join(&cluster.scratch_dir("machine-2"), &invite).await;
    assert_eq!(second.code, Some(4), "{second}");
    assert!(second.stderr.contains("used up"), "{second}");
    assert!(
        second.stderr.contains("p2p invite --token-for USER"),
        "{second}"
    );

    let (invite, id) = invite_for("5").await;
    admin.p2p_ok(&["join-tokens", "revoke", &id]).await;
    let revoked = join(&cluster.scratch_dir("machine-3"), &invite).await;
    assert_eq!(revoked.code, Some(4), "{revoked}");
    assert!(revoked.stderr.contains("revoked"), "{revoked}");

    let listed = admin.p2p_ok(&["--json", "join-tokens"]).await.json();
    let uses_left: Vec<u64> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["uses_left"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(uses_left, [5, 0], "refusals spend nothing: {listed}");
}
