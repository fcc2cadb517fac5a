//! Holdings follow the files on disk: a download that joins a running one
//! still lands at its own path, a held copy the user deleted, moved or
//! edited is withdrawn and fetched again, and a download with no usable
//! source ends in the promised time with a message that names the cause.

use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions, assert_same_content, random_file};

/// Bytes `agent` has uploaded so far.
async fn uploaded(agent: &impl p2p_tests::AgentHandle) -> u64 {
    agent
        .status()
        .await
        .counters
        .map(|c| c.bytes_uploaded)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_gets_to_two_paths_both_get_the_file_from_one_transfer() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("4MiB"))
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let size = 8 * 1024 * 1024;
    let original = random_file(&cluster.scratch_dir("input"), size, 41);
    let id = a.share(&original).await;

    let out = cluster.scratch_dir("out");
    let (t1, t2) = (out.join("t1.bin"), out.join("t2.bin"));
    let (got1, got2) = tokio::join!(b.get(&id, &t1), b.get(&id, &t2));
    assert_eq!(got1, t1);
    assert_eq!(got2, t2, "the second get reported another path");
    assert_same_content(&original, &t1);
    assert_same_content(&original, &t2);
    let sent = uploaded(&a).await;
    assert!(
        sent < size as u64 * 3 / 2,
        "the source uploaded {sent} bytes for one {size}-byte file: the transfer was not shared"
    );
}
