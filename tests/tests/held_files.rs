//! Holdings follow the files on disk: a download that joins a running one
//! still lands at its own path, a held copy the user deleted, moved or
//! edited is withdrawn and fetched again, and a download with no usable
//! source ends in the promised time with a message that names the cause.

use std::path::Path;
use std::time::{Duration, Instant};

use p2p_tests::AgentHandle as _;
use p2p_tests::{
    AgentOptions, Cluster, ClusterOptions, assert_same_content, eventually, random_file,
};

/// Bytes `agent` has uploaded so far.
async fn uploaded(agent: &impl p2p_tests::AgentHandle) -> u64 {
    agent
        .status()
        .await
        .counters
        .map(|c| c.bytes_uploaded)
        .unwrap_or_default()
}

/// Online holders of `file_id` as the index lists them, through `agent`.
async fn online_holders(agent: &impl p2p_tests::AgentHandle, file_id: &str) -> Option<u32> {
    let file = agent.network_file(file_id).await?.file?;
    Some(file.online_holders)
}

/// Waits until `agent` no longer offers `file_id` to the index.
async fn until_withdrawn(agent: &impl p2p_tests::AgentHandle, file_id: &str) {
    eventually(
        Duration::from_secs(20),
        "the vanished copy to be withdrawn",
        || async {
            let file = agent.network_file(file_id).await?;
            (file.local_state != p2p_proto::agent::v1::LocalState::Complete as i32).then_some(())
        },
    )
    .await;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_download_is_fetched_again() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let size = 3 * 1024 * 1024;
    let original = random_file(&cluster.scratch_dir("input"), size, 42);
    let id = a.share(&original).await;
    let out = cluster.scratch_dir("out");
    let first = b.get(&id, &out.join("b.bin")).await;
    std::fs::remove_file(&first).unwrap();
    let before = uploaded(&a).await;

    let again = b.get(&id, &out.join("b2.bin")).await;
    assert_same_content(&original, &again);
    let sent = uploaded(&a).await - before;
    assert!(
        sent >= size as u64,
        "the source sent only {sent} bytes for the second download"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_download_is_withdrawn_and_fetched_again_to_a_new_path() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), 2 * 1024 * 1024, 43);
    let id = a.share(&original).await;
    let out = cluster.scratch_dir("out");
    let got = b.get(&id, &out.join("b.bin")).await;
    std::fs::rename(&got, out.join("renamed.bin")).unwrap();
    until_withdrawn(&b, &id).await;
    eventually(
        Duration::from_secs(10),
        "the index to list only the sharer",
        || async { (online_holders(&a, &id).await? == 1).then_some(()) },
    )
    .await;

    let again = b.get(&id, &out.join("elsewhere.bin")).await;
    assert_same_content(&original, &again);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_ends_in_time_when_the_only_holders_copy_was_deleted() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let c = cluster
        .add_user_agent("carol", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), 2 * 1024 * 1024, 44);
    let id = a.share(&original).await;
    let copy = b
        .get(&id, &cluster.scratch_dir("out-b").join("b.bin"))
        .await;
    a.kill();
    std::fs::remove_file(&copy).unwrap();

    let started = Instant::now();
    let dest = cluster.scratch_dir("out-c").join("c.bin");
    let output = tokio::time::timeout(
        Duration::from_secs(75),
        c.p2p(&["get", &id, "-o", dest.to_str().unwrap()]),
    )
    .await
    .expect("the download did not end within 75 s");
    let took = started.elapsed();
    assert!(!output.success(), "the download cannot succeed: {output}");
    assert!(took < Duration::from_secs(70), "it took {took:?}");
    // Neither "busy, retry" nor "listed": no online peer holds the
    // chunks, and the stopped seeder is counted as what it is.
    assert!(
        output.stderr.contains("no online peer holds the"),
        "the message does not say why: {output}"
    );
    assert!(
        output.stderr.contains("1 offline or unreachable"),
        "the stopped seeder is not counted: {output}"
    );
    assert!(
        !output.stderr.contains("cannot do that right now"),
        "{output}"
    );
    assert!(!output.stderr.contains("listed"), "{output}");
    assert!(!output.stderr.contains("no file named"), "{output}");
    assert!(!dest.exists());
    eventually(
        Duration::from_secs(15),
        "the index to report no online holder",
        || async { (online_holders(&c, &id).await? == 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_shared_original_is_no_longer_offered() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let d = cluster
        .add_user_agent("dave", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), 2 * 1024 * 1024, 45);
    let id = a.share(&original).await;
    edit_in_place(&original, 1024 * 1024, b"edited");

    let started = Instant::now();
    let dest = cluster.scratch_dir("out-d").join("g.bin");
    let output = tokio::time::timeout(
        Duration::from_secs(75),
        d.p2p(&["get", &id, "-o", dest.to_str().unwrap()]),
    )
    .await
    .expect("the download did not end within 75 s");
    assert!(!output.success(), "only an edited copy exists: {output}");
    assert!(started.elapsed() < Duration::from_secs(70));
    assert!(!dest.exists(), "unverified bytes reached the destination");
    let listing = a.p2p_ok(&["ls"]).await;
    assert!(
        listing
            .stdout
            .contains("changed since shared: share it again"),
        "the sharer's `p2p ls` does not say so: {listing}"
    );
    let status = a.p2p_ok(&["status"]).await;
    assert!(
        status
            .stdout
            .contains("changed since shared: share it again"),
        "the sharer's `p2p status` does not say so: {status}"
    );

    let path = original.to_str().unwrap();
    let shared = a.p2p_ok(&["--json", "share", "--replace", path]).await;
    let new_id = shared.json()["shared"][0]["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_id, id, "the edited content is a new file");
    eventually(
        Duration::from_secs(10),
        "the replaced entry to leave the network's list",
        || async { a.network_file(&id).await.is_none().then_some(()) },
    )
    .await;
    let got = d
        .get(&new_id, &cluster.scratch_dir("out-d").join("new.bin"))
        .await;
    assert_same_content(&original, &got);
}

/// Overwrites `bytes` at `offset` of `path` without changing its size.
fn edit_in_place(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sharer_gets_its_own_file_to_another_path_and_keeps_sharing_it() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), 1024 * 1024, 46);
    let id = a.share(&original).await;
    let copy = a
        .get(&id, &cluster.scratch_dir("out").join("copy.bin"))
        .await;
    assert_same_content(&original, &copy);
    let file = a.network_file(&id).await.expect("listed");
    assert!(file.local_problem.is_empty(), "{file:?}");
    assert_eq!(file.file.map(|f| f.online_holders), Some(1));
}
