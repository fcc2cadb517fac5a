//! peer-agent end to end in one process: real auth-svc, index-svc and
//! agents on loopback, driven through the generated AgentControl client
//! and, for the data path's refusals, the PeerService client.

mod support;

use p2p_proto::agent::v1 as pb;
use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::{channel, with_bearer, with_peer_credentials};
use p2p_services::tls::ClientTls;
use support::{AgentOptions, Cluster, eventually};
use tonic::Code;

const CHUNK: u64 = 256 * 1024;

fn fetch(file_id: &str, start: u32, count: u32) -> FetchChunksRequest {
    FetchChunksRequest {
        file_id: file_id.into(),
        ranges: vec![ChunkRange { start, count }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_file_is_listed_and_downloaded_byte_for_byte() {
    let cluster = Cluster::start().await;
    let a = cluster.logged_in_agent("a", AgentOptions::default()).await;
    let b = cluster.logged_in_agent("b", AgentOptions::default()).await;
    let (path, data) = cluster.random_file("report.bin", 3 * CHUNK as usize + 1234, 1);

    let file = a.share(&path).await;
    assert_eq!(file.size_bytes, data.len() as u64);
    assert_eq!(file.chunk_count, 4);
    let listed = b
        .network_file(&file.file_id)
        .await
        .expect("B lists the file");
    assert_eq!(listed.local_state, pb::LocalState::None as i32);
    let on_a = a
        .network_file(&file.file_id)
        .await
        .expect("A lists the file");
    assert_eq!(on_a.local_state, pb::LocalState::Complete as i32);
    assert_eq!(on_a.local_path, path.display().to_string());

    let done = b
        .download("report.bin", "", false)
        .await
        .expect("download succeeds");
    assert_eq!(done.stage, pb::DownloadStage::Done as i32);
    assert_eq!(done.have_bytes, data.len() as u64);
    let landed = std::fs::read(&done.final_path).expect("downloaded file exists");
    assert!(landed == data, "downloaded bytes differ from the original");
    assert_eq!(
        std::path::Path::new(&done.final_path),
        b.data_dir.join("downloads").join("report.bin")
    );

    let listed = b
        .network_file(&file.file_id)
        .await
        .expect("B lists the file");
    assert_eq!(listed.local_state, pb::LocalState::Complete as i32);
    assert_eq!(listed.local_bytes, data.len() as u64);
    assert_eq!(a.counters().await.chunks_served, 4);
    assert_eq!(b.counters().await.chunks_downloaded, 4);
    assert!(
        !b.data_dir
            .join("partial")
            .join(format!("{}.part", file.file_id))
            .exists(),
        "the partial file is gone after the rename"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_draws_from_two_sources() {
    let cluster = Cluster::start().await;
    let slow = AgentOptions {
        max_upload_rate: Some("2MiB".into()),
        ..Default::default()
    };
    let a = cluster.logged_in_agent("a", slow.clone()).await;
    let b = cluster.logged_in_agent("b", slow).await;
    let c = cluster.logged_in_agent("c", AgentOptions::default()).await;
    let (path, data) = cluster.random_file("movie.bin", 24 * CHUNK as usize, 2);
    let file = a.share(&path).await;
    let copy = cluster.dir.path().join("movie-copy.bin");
    std::fs::copy(&path, &copy).expect("copy");
    let same = b.share(&copy).await;
    assert_eq!(
        same.file_id, file.file_id,
        "identical content, identical id"
    );

    let done = c
        .download(&file.file_id, "", false)
        .await
        .expect("download succeeds");
    assert!(std::fs::read(&done.final_path).expect("file") == data);
    let served_a = a.counters().await.chunks_served;
    let served_b = b.counters().await.chunks_served;
    assert!(
        served_a > 0 && served_b > 0,
        "A served {served_a}, B served {served_b}"
    );
    assert!(served_a + served_b >= 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupting_source_is_detected_and_the_file_is_still_correct() {
    let cluster = Cluster::start().await;
    let honest = cluster
        .logged_in_agent(
            "honest",
            AgentOptions {
                max_upload_rate: Some("2MiB".into()),
                ..Default::default()
            },
        )
        .await;
    let liar = cluster
        .logged_in_agent(
            "liar",
            AgentOptions {
                corrupt_uploads: true,
                ..Default::default()
            },
        )
        .await;
    let b = cluster.logged_in_agent("b", AgentOptions::default()).await;
    let (path, data) = cluster.random_file("data.bin", 16 * CHUNK as usize, 3);
    let file = honest.share(&path).await;
    let copy = cluster.dir.path().join("data-copy.bin");
    std::fs::copy(&path, &copy).expect("copy");
    liar.share(&copy).await;

    let done = b
        .download(&file.file_id, "", false)
        .await
        .expect("download succeeds");
    assert!(std::fs::read(&done.final_path).expect("file") == data);
    let counters = b.counters().await;
    assert!(
        counters.chunks_rejected >= 1,
        "the corrupt chunk was rejected"
    );
    assert_eq!(counters.chunks_downloaded, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_download_resumes_without_refetching_verified_chunks() {
    let cluster = Cluster::start().await;
    let a = cluster
        .logged_in_agent(
            "a",
            AgentOptions {
                max_upload_rate: Some("1MiB".into()),
                ..Default::default()
            },
        )
        .await;
    let b = cluster.logged_in_agent("b", AgentOptions::default()).await;
    let (path, data) = cluster.random_file("big.bin", 12 * CHUNK as usize, 4);
    let file = a.share(&path).await;

    let mut stream = b
        .control
        .clone()
        .download(pb::DownloadRequest {
            file: file.file_id.clone(),
            ..Default::default()
        })
        .await
        .expect("download starts")
        .into_inner();
    tokio::time::timeout(support::WAIT, async {
        while let Some(progress) = stream.message().await.expect("progress") {
            if progress.have_bytes >= 2 * CHUNK {
                return;
            }
        }
        panic!("download ended before two chunks arrived");
    })
    .await
    .expect("two chunks arrive");
    b.control
        .clone()
        .cancel(pb::CancelRequest {
            file: file.file_id.clone(),
        })
        .await
        .expect("cancel");
    let ended = tokio::time::timeout(support::WAIT, async {
        loop {
            match stream.message().await {
                Err(status) => return status.code(),
                Ok(None) => return Code::Ok,
                Ok(Some(_)) => {}
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(ended, Code::Cancelled);
    let partial = eventually(|| async {
        b.network_file(&file.file_id)
            .await
            .filter(|f| f.local_state == pb::LocalState::Partial as i32)
    })
    .await;
    let verified_chunks = (partial.local_bytes / CHUNK) as u32;
    assert!((2..12).contains(&verified_chunks));
    let downloaded_before = b.counters().await.chunks_downloaded;
    assert_eq!(downloaded_before, u64::from(verified_chunks));

    let done = b
        .download(&file.file_id, "", false)
        .await
        .expect("resume succeeds");
    assert_eq!(done.resumed_chunks, verified_chunks);
    assert!(std::fs::read(&done.final_path).expect("file") == data);
    assert_eq!(
        b.counters().await.chunks_downloaded,
        12,
        "each chunk was fetched and verified exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_chunks_refuses_bad_requests() {
    let cluster = Cluster::start().await;
    let a = cluster
        .logged_in_agent(
            "a",
            AgentOptions {
                max_upload_rate: Some("64KiB".into()),
                max_uploads: Some(1),
                ..Default::default()
            },
        )
        .await;
    let (path, _) = cluster.random_file("small.bin", 2 * CHUNK as usize, 5);
    let file = a.share(&path).await;
    let mut peer =
        PeerServiceClient::new(channel(&a.peer_addr, &ClientTls::Plaintext).expect("peer channel"));
    let a_id = a.status().await.peer_id;
    let (token, proof) = cluster.admin_peer_credentials(&a_id).await;

    let no_token = peer.fetch_chunks(fetch(&file.file_id, 0, 1)).await;
    assert_eq!(
        no_token.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );

    // The data path takes only peer tokens naming this peer: an access
    // token, or a peer token for another peer, is refused.
    let access = cluster.admin_token().await;
    let with_access = peer
        .fetch_chunks(with_bearer(fetch(&file.file_id, 0, 1), &access))
        .await;
    assert_eq!(
        with_access.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );
    let (other_token, elsewhere) = cluster.admin_peer_credentials("another-peer").await;
    let with_other = peer
        .fetch_chunks(with_peer_credentials(
            fetch(&file.file_id, 0, 1),
            &other_token,
            &elsewhere,
        ))
        .await;
    assert_eq!(
        with_other.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );
    let without_proof = peer
        .fetch_chunks(with_bearer(fetch(&file.file_id, 0, 1), &token))
        .await;
    assert_eq!(
        without_proof.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );

    let past_end = peer
        .fetch_chunks(with_peer_credentials(
            fetch(&file.file_id, 1, 2),
            &token,
            &proof,
        ))
        .await;
    assert_eq!(past_end.err().map(|s| s.code()), Some(Code::OutOfRange));

    let unknown = peer
        .fetch_chunks(with_peer_credentials(
            fetch(&"0".repeat(64), 0, 1),
            &token,
            &proof,
        ))
        .await;
    assert_eq!(unknown.err().map(|s| s.code()), Some(Code::NotFound));

    let too_many = peer
        .fetch_chunks(with_peer_credentials(
            fetch(&file.file_id, 0, 1025),
            &token,
            &proof,
        ))
        .await;
    assert!(too_many.is_err());

    // One slow stream holds the only upload slot; a second is turned away.
    let _first = peer
        .fetch_chunks(with_peer_credentials(
            fetch(&file.file_id, 0, 2),
            &token,
            &proof,
        ))
        .await
        .expect("first stream is accepted");
    let second = peer
        .fetch_chunks(with_peer_credentials(
            fetch(&file.file_id, 0, 1),
            &token,
            &proof,
        ))
        .await;
    let status = second.expect_err("second stream is refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("try another source"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn existing_destination_is_refused_without_force() {
    let cluster = Cluster::start().await;
    let a = cluster.logged_in_agent("a", AgentOptions::default()).await;
    let b = cluster.logged_in_agent("b", AgentOptions::default()).await;
    let (path, data) = cluster.random_file("notes.txt", 1000, 6);
    let file = a.share(&path).await;
    let dest = cluster.dir.path().join("existing.txt");
    std::fs::write(&dest, b"keep me").expect("write");

    let refused = b
        .download(&file.file_id, &dest.display().to_string(), false)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(std::fs::read(&dest).expect("still there"), b"keep me");

    let escape = b.download(&file.file_id, "../../escape.txt", false).await;
    assert_eq!(escape.err().map(|s| s.code()), Some(Code::InvalidArgument));

    let done = b
        .download(&file.file_id, &dest.display().to_string(), true)
        .await
        .expect("forced download succeeds");
    assert!(std::fs::read(&done.final_path).expect("file") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_that_need_a_session_say_to_log_in() {
    let cluster = Cluster::start().await;
    let a = cluster.agent("a", AgentOptions::default()).await;
    let status = eventually(|| {
        let mut control = a.control.clone();
        async move { control.status(pb::StatusRequest {}).await.ok() }
    })
    .await
    .into_inner();
    assert!(!status.logged_in);
    let refused = a
        .control
        .clone()
        .share(pb::ShareRequest {
            path: "/etc/hostname".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("p2p login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_deletes_our_copy_but_never_the_shared_original() {
    let cluster = Cluster::start().await;
    let a = cluster.logged_in_agent("a", AgentOptions::default()).await;
    let b = cluster.logged_in_agent("b", AgentOptions::default()).await;
    let (path, _) = cluster.random_file("keep.bin", 5000, 7);
    let file = a.share(&path).await;
    let done = b
        .download(&file.file_id, "", false)
        .await
        .expect("download");

    b.control
        .clone()
        .remove(pb::RemoveRequest {
            file: file.file_id.clone(),
            network: false,
        })
        .await
        .expect("remove on B");
    assert!(
        !std::path::Path::new(&done.final_path).exists(),
        "B's copy is deleted"
    );

    a.control
        .clone()
        .remove(pb::RemoveRequest {
            file: file.file_id.clone(),
            network: true,
        })
        .await
        .expect("remove on A");
    assert!(path.exists(), "the user's original is never deleted");
    assert!(
        b.network_file(&file.file_id).await.is_none(),
        "gone from the network"
    );
}
