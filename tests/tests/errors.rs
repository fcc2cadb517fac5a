//! Errors say what happened: an agent that dies during `p2p get` is not
//! "an error (Unknown)", a download that resumes says so, and an index
//! that refuses an agent is not called unreachable.

use std::time::Duration;

use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions, USER_PASSWORD, eventually, random_file};

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_exits_3_saying_the_agent_stopped_when_it_dies_during_get() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("1MiB"))
        .await;
    let mut b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 6 * 1024 * 1024, 61);
    let id = a.share(&original).await;
    let dest = cluster.scratch_dir("out").join("copy.bin");
    let dest_arg = dest.to_str().unwrap().to_string();

    let get = b
        .p2p_command(&["get", &id, "-o", &dest_arg])
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the download to start", || async {
        let file = b.network_file(&id).await?;
        (file.local_bytes > 0).then_some(())
    })
    .await;
    b.kill();
    let out = tokio::time::timeout(Duration::from_secs(30), get.wait_with_output())
        .await
        .expect("p2p get ended once the agent died")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the agent stopped") && stderr.contains("same command"),
        "{stderr}"
    );

    b.restart().await;
    if !b.status().await.logged_in {
        b.login("bob", USER_PASSWORD).await;
    }
    let again = b.get(&id, &dest).await;
    p2p_tests::assert_same_content(&original, &again);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_address_the_index_refuses_says_so_not_unreachable() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let advertised = "10.200.0.1:50053";
    let a = cluster
        .add_user_agent(
            "alice",
            AgentOptions {
                env: vec![("PEER_ADVERTISE".into(), advertised.into())],
                ..AgentOptions::default()
            },
        )
        .await;
    let original = random_file(&cluster.scratch_dir("input"), 64 * 1024, 62);

    let output = a.p2p(&["share", original.to_str().unwrap()]).await;
    assert!(!output.success(), "{output}");
    assert!(
        output
            .stderr
            .contains("the index refused to register this agent"),
        "{output}"
    );
    assert!(
        output.stderr.contains(&format!(
            "advertise_addr \"{advertised}\" is not this agent's own address"
        )),
        "the index's reason is missing: {output}"
    );
    assert!(output.stderr.contains("PEER_ADVERTISE"), "{output}");
    assert!(!output.stderr.contains("unreachable"), "{output}");
    assert!(
        !output.stderr.contains("check that index-svc runs"),
        "{output}"
    );
}
