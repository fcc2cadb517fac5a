//! The five steps end to end across real processes: share on one agent,
//! list and download on others, partial holders serving while they still
//! download, downloads that go on without the index once peers exchange
//! holdings directly, and a seeder that uploads about one copy.

use p2p_tests::AgentHandle as _;
use std::time::Duration;

use p2p_tests::{
    Agent, AgentOptions, Cluster, ClusterOptions, assert_same_content, eventually, random_file,
};

/// A seeder limited to `seeder_rate` and `n` downloaders, every agent
/// started with `options`, the file shared.
async fn swarm(
    cluster: &Cluster,
    options: AgentOptions,
    seeder_rate: &str,
    n: usize,
    size: usize,
) -> (Agent, Vec<Agent>, std::path::PathBuf, String) {
    let seeder = cluster
        .add_user_agent("seeder", options.clone().max_upload_rate(seeder_rate))
        .await;
    let mut downloaders = Vec::new();
    for i in 0..n {
        downloaders.push(
            cluster
                .add_user_agent(&format!("leech{i}"), options.clone())
                .await,
        );
    }
    let input = cluster.scratch_dir("input");
    let original = random_file(&input, size, 7);
    let id = seeder.share(&original).await;
    (seeder, downloaders, original, id)
}

/// Every downloader gets `id`, all at once; returns where each put it.
async fn get_all(cluster: &Cluster, downloaders: &[Agent], id: &str) -> Vec<std::path::PathBuf> {
    let gets = downloaders.iter().enumerate().map(|(i, d)| {
        let dest = cluster.scratch_dir(&format!("out{i}")).join("copy.bin");
        async move { d.get(id, &dest).await }
    });
    futures::future::join_all(gets).await
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_file_is_listed_on_another_agent_and_downloads_byte_for_byte() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let input = cluster.scratch_dir("input");
    let original = random_file(&input, 3 * 1024 * 1024 + 17, 1);

    let id = a.share(&original).await;

    let listed = b.p2p_ok(&["ls"]).await;
    let name = original.file_name().unwrap().to_str().unwrap();
    assert!(listed.stdout.starts_with("NAME"), "{listed}");
    assert!(listed.stdout.contains(name), "{listed}");
    assert!(listed.stdout.contains(&id[..12]), "{listed}");
    assert!(listed.stdout.contains("alice"), "{listed}");
    let json = b.p2p_ok(&["--json", "ls", name]).await.json();
    assert_eq!(json["files"][0]["file_id"], id.as_str());
    assert_eq!(json["files"][0]["local_state"], "none");

    let out = cluster.scratch_dir("out-b");
    let downloaded = b.get(name, &out.join("copy.bin")).await;
    assert_same_content(&original, &downloaded);
    let view = b.network_file(&id).await.expect("listed after download");
    assert_eq!(view.local_bytes, view.file.unwrap().size_bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_holders_serve_while_still_downloading() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    // A slow seeder forces B and C to trade the chunks each got first.
    let a = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate("2MiB"))
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let c = cluster
        .add_user_agent("carol", AgentOptions::default())
        .await;
    let input = cluster.scratch_dir("input");
    let original = random_file(&input, 16 * 1024 * 1024, 2);
    let id = a.share(&original).await;

    let dest_b = cluster.scratch_dir("out-b").join("copy.bin");
    let dest_c = cluster.scratch_dir("out-c").join("copy.bin");
    let (got_b, got_c) = tokio::join!(b.get(&id, &dest_b), c.get(&id, &dest_c),);
    assert_same_content(&original, &got_b);
    assert_same_content(&original, &got_c);

    let (sb, sc) = (b.status().await, c.status().await);
    let (cb, cc) = (
        sb.counters.unwrap_or_default(),
        sc.counters.unwrap_or_default(),
    );
    assert!(
        cb.chunks_served_while_downloading + cc.chunks_served_while_downloading > 0,
        "no chunk was served by a partial holder: B {cb:?}, C {cc:?}"
    );
    assert!(
        cb.chunks_from_partial_sources + cc.chunks_from_partial_sources > 0,
        "no chunk came from a partial holder: B {cb:?}, C {cc:?}"
    );
    assert_eq!(cb.chunks_rejected + cc.chunks_rejected, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_download_is_offered_as_a_source() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let b = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let input = cluster.scratch_dir("input");
    let original = random_file(&input, 1024 * 1024, 3);
    let id = a.share(&original).await;
    b.get(&id, &cluster.scratch_dir("out").join("copy.bin"))
        .await;

    eventually(
        Duration::from_secs(15),
        "two complete copies listed",
        || async {
            let file = a.network_file(&id).await?.file?;
            (file.complete_copies == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_finish_when_the_index_dies_after_every_downloader_started() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let size = 24 * 1024 * 1024;
    let (_seeder, downloaders, original, id) =
        swarm(&cluster, AgentOptions::default(), "6MiB", 3, size).await;
    let dests: Vec<_> = (0..downloaders.len())
        .map(|i| cluster.scratch_dir(&format!("out{i}")).join("copy.bin"))
        .collect();

    let gets = futures::future::join_all(
        downloaders
            .iter()
            .zip(&dests)
            .map(|(d, dest)| d.get(&id, dest)),
    );
    let kill = async {
        for d in &downloaders {
            eventually(
                Duration::from_secs(20),
                "every downloader started",
                || async {
                    let counters = d.status().await.counters.unwrap_or_default();
                    (counters.bytes_downloaded > 0).then_some(())
                },
            )
            .await;
        }
        cluster.stop_index();
        let mut have = Vec::new();
        for d in &downloaders {
            have.push(
                d.status()
                    .await
                    .counters
                    .unwrap_or_default()
                    .bytes_downloaded,
            );
        }
        have
    };
    let (done, have_at_kill) = tokio::join!(gets, kill);
    assert!(
        have_at_kill.iter().all(|&h| h < size as u64),
        "a download finished before the index died, proving nothing: {have_at_kill:?}"
    );
    for got in done {
        assert_same_content(&original, &got);
    }
}

/// Asserts that `seeder` uploaded at most `max_copies` copies of a file of
/// `size` bytes, by its byte counter.
async fn assert_seeder_uploaded_at_most(seeder: &Agent, size: usize, max_copies: f64) {
    let uploaded = seeder
        .status()
        .await
        .counters
        .unwrap_or_default()
        .bytes_uploaded;
    let copies = uploaded as f64 / size as f64;
    println!("the seeder uploaded {copies:.3} copies of the file");
    assert!(
        copies <= max_copies,
        "the seeder uploaded {uploaded} bytes, {copies:.3} copies of the file; at most {max_copies:.2}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limited_seeder_uploads_about_one_copy_to_four_downloaders() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let size = 32 * 1024 * 1024;
    let (seeder, downloaders, original, id) =
        swarm(&cluster, AgentOptions::default(), "16MiB", 4, size).await;

    for got in get_all(&cluster, &downloaders, &id).await {
        assert_same_content(&original, &got);
    }
    assert_seeder_uploaded_at_most(&seeder, size, 1.05).await;
}

/// Over a plaintext data path only the index vouches for a listed peer's
/// address, so downloaders find each other through it: they must do so
/// early, or they take from the seeder what a peer already has.
#[tokio::test(flavor = "multi_thread")]
async fn over_plaintext_a_limited_seeder_still_uploads_about_one_copy() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let size = 32 * 1024 * 1024;
    let plaintext = AgentOptions {
        env: vec![("P2P_PEER_INSECURE_PLAINTEXT".into(), "true".into())],
        ..AgentOptions::default()
    };
    let (seeder, downloaders, original, id) = swarm(&cluster, plaintext, "16MiB", 4, size).await;

    for got in get_all(&cluster, &downloaders, &id).await {
        assert_same_content(&original, &got);
    }
    assert_seeder_uploaded_at_most(&seeder, size, 1.10).await;
}
