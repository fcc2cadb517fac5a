//! The basic share and download with auth-svc and index-svc on PostgreSQL.
//! Skips, saying why, when no PostgreSQL is configured (CI sets
//! P2P_TEST_POSTGRES_URL).

use p2p_tests::AgentHandle as _;
use p2p_tests::{AgentOptions, Cluster, ClusterOptions, assert_same_content, random_file};

#[tokio::test(flavor = "multi_thread")]
async fn share_and_download_with_postgres_services() {
    let Some(options) = ClusterOptions::postgres().await else {
        return;
    };
    let cluster = Cluster::start(options).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 2 * 1024 * 1024 + 1, 10);
    let id = a.share(&original).await;
    let listed = b.p2p_ok(&["--json", "ls"]).await.json();
    assert_eq!(listed["files"][0]["file_id"], id.as_str());
    let got = b
        .get(&id, &cluster.scratch_dir("out").join("copy.bin"))
        .await;
    assert_same_content(&original, &got);
}
