//! Agents given several index replicas (`--index-url a,b`) on one
//! database: a download goes on while the replica it talks to is killed,
//! sharing and listing keep working through the other, and bringing the
//! killed one back changes nothing.

use std::time::Duration;

use p2p_tests::AgentHandle as _;
use p2p_tests::{
    AgentOptions, Cluster, ClusterOptions, assert_same_content, eventually, random_file,
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
async fn download_completes_while_each_index_replica_in_turn_is_killed() {
    let mut cluster = Cluster::start(ClusterOptions {
        index_replicas: 2,
        ..ClusterOptions::default()
    })
    .await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("2MiB"))
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 10 * 1024 * 1024, 31);
    let id = a.share(&original).await;

    // Whichever replica each agent prefers, both are lost once mid-download.
    let dest = cluster.scratch_dir("out").join("copy.bin");
    let (got, ()) = tokio::join!(b.get(&id, &dest), async {
        until_holding(&b, &id, 1024 * 1024).await;
        cluster.stop_index_replica(0);
        until_holding(&b, &id, 4 * 1024 * 1024).await;
        cluster.start_index_replica(0).await;
        cluster.stop_index_replica(1);
    });
    assert_same_content(&original, &got);

    // With replica 1 still down, the network is usable through replica 0.
    let second = random_file(&cluster.scratch_dir("input-2"), 256 * 1024, 32);
    let second_id = a.share(&second).await;
    let listed = b.p2p_ok(&["ls"]).await;
    assert!(listed.stdout.contains(&id[..12]), "{listed}");
    assert!(listed.stdout.contains(&second_id[..12]), "{listed}");

    // Bringing it back changes nothing: both files, both holders.
    cluster.start_index_replica(1).await;
    let got = b
        .get(&second_id, &cluster.scratch_dir("out-2").join("second.bin"))
        .await;
    assert_same_content(&second, &got);
    let file = b
        .network_file(&id)
        .await
        .and_then(|f| f.file)
        .expect("listed");
    assert_eq!(file.complete_copies, 2, "alice and bob hold it: {file:?}");
}
