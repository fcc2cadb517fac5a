//! Downloads that survive faults: a source killed mid-transfer, a peer that
//! lies about its data, a downloader killed with SIGKILL, and auth-svc
//! going away.

use p2p_tests::AgentHandle as _;
use std::time::Duration;

use p2p_tests::{
    AgentOptions, Cluster, ClusterOptions, USER_PASSWORD, assert_same_content, eventually,
    random_file,
};

/// Waits until `agent` holds at least `bytes` verified bytes of `file_id`.
async fn until_holding(agent: &p2p_tests::Agent, file_id: &str, bytes: u64) {
    eventually(
        Duration::from_secs(60),
        "the download to make progress",
        || async {
            let file = agent.network_file(file_id).await?;
            (file.local_bytes >= bytes).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn download_completes_when_a_complete_source_is_killed_mid_transfer() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let slow = || AgentOptions::default().max_upload_rate("2MiB");
    let mut a = cluster.add_user_agent("alice", slow()).await;
    let e = cluster.add_user_agent("erin", slow()).await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let c = cluster
        .add_user_agent("carol", AgentOptions::default())
        .await;
    let input = cluster.scratch_dir("input");
    let original = random_file(&input, 12 * 1024 * 1024, 6);
    let id = a.share(&original).await;
    // Erin holds an identical copy of her own, so it is the same file.
    let copy = cluster.scratch_dir("erin-input").join("same.bin");
    std::fs::copy(&original, &copy).unwrap();
    assert_eq!(e.share(&copy).await, id);

    let dest_b = cluster.scratch_dir("out-b").join("copy.bin");
    let dest_c = cluster.scratch_dir("out-c").join("copy.bin");
    let (got_b, got_c, ()) = tokio::join!(b.get(&id, &dest_b), c.get(&id, &dest_c), async {
        until_holding(&c, &id, 1024 * 1024).await;
        a.kill();
    },);
    assert!(!a.is_running());
    assert_same_content(&original, &got_b);
    assert_same_content(&original, &got_c);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_chunks_are_rejected_and_the_file_is_still_correct() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let honest = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("4MiB"))
        .await;
    let liar = cluster
        .add_user_agent("mallory", AgentOptions::default().corrupt_uploads())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 6 * 1024 * 1024, 7);
    let id = honest.share(&original).await;
    let copy = cluster.scratch_dir("mallory-input").join("same.bin");
    std::fs::copy(&original, &copy).unwrap();
    assert_eq!(liar.share(&copy).await, id);

    let got = b
        .get(&id, &cluster.scratch_dir("out").join("copy.bin"))
        .await;
    assert_same_content(&original, &got);
    let counters = b.status().await.counters.unwrap_or_default();
    assert!(
        counters.chunks_rejected > 0,
        "the corrupt peer went unnoticed: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_downloader_resumes_without_refetching_verified_chunks() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("1MiB"))
        .await;
    let mut b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let size = 8 * 1024 * 1024;
    let original = random_file(&cluster.scratch_dir("input"), size, 8);
    let id = a.share(&original).await;
    let info = a
        .network_file(&id)
        .await
        .and_then(|f| f.file)
        .expect("shared file listed");
    let dest = cluster.scratch_dir("out").join("copy.bin");
    let dest_arg = dest.to_str().unwrap().to_string();

    let mut first = b
        .p2p_command(&["--json", "get", &id, "-o", &dest_arg])
        .spawn()
        .unwrap();
    until_holding(&b, &id, 2 * 1024 * 1024).await;
    b.kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), first.wait()).await;
    assert!(
        !dest.exists(),
        "a partial download appeared under the final name"
    );

    b.restart().await;
    if !b.status().await.logged_in {
        b.login("bob", USER_PASSWORD).await;
    }
    let second = b.p2p_ok(&["--json", "get", &id, "-o", &dest_arg]).await;
    let done = second.json();
    assert_eq!(done["event"], "done", "{second}");
    assert_same_content(&original, &dest);

    let resumed = done["resumed_chunks"].as_u64().unwrap_or(0);
    assert!(resumed >= 1, "nothing was resumed: {second}");
    let counters = b.status().await.counters.unwrap_or_default();
    let chunks = u64::from(info.chunk_count);
    assert!(
        counters.chunks_downloaded <= chunks - resumed,
        "{} chunks fetched after the restart, but {resumed} of {chunks} were already verified",
        counters.chunks_downloaded
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transfers_go_on_while_auth_is_down() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 2 * 1024 * 1024, 9);
    let id = a.share(&original).await;

    cluster.stop_auth();
    let got = b
        .get(&id, &cluster.scratch_dir("out").join("copy.bin"))
        .await;
    assert_same_content(&original, &got);
    let listed = b.p2p_ok(&["ls"]).await;
    assert!(listed.stdout.contains(&id[..12]), "{listed}");

    cluster.start_auth().await;
    let status = b.status().await;
    assert!(
        status.logged_in,
        "the agent lost its session while auth was down"
    );
}
