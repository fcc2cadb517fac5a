//! Hostile and broken peers on loopback: a registered peer that lies about
//! its data (wrong bytes, short chunks, chunks nobody asked for, a stream
//! that never ends), a caller that opens FetchChunks streams and never
//! reads them, a caller whose token comes from another deployment, and
//! peers that lie on their holdings stream (false claims, floods, junk
//! peer addresses).
//! None of them may corrupt a file, pin unbounded memory or block
//! well-behaved peers; every test ends with the "nothing lost" audit.

use p2p_tests::AgentHandle as _;
use std::time::{Duration, Instant};

use p2p_proto::index::v1::{ListFilesRequest, LocateSourcesRequest};
use p2p_proto::peer::v1::{ChunkRange, FetchChunksRequest};
use p2p_services::client::with_bearer;
use p2p_tests::audit::{HonestAgent, assert_nothing_lost};
use p2p_tests::hostile::{
    FLOOD_UPDATES_PER_SEC, HostilePeer, Misbehaviour, agent_pid, memory_bytes,
};
use p2p_tests::{
    ADMIN_PASSWORD, ADMIN_USER, AgentOptions, Cluster, ClusterOptions, USER_PASSWORD,
    assert_same_content, eventually, random_file,
};
use tonic::Code;

/// Size of the files the lying-peer tests download.
const FILE_BYTES: usize = 4 * 1024 * 1024;
/// The honest source's upload limit: slow enough that the downloader asks
/// the hostile peer too.
const HONEST_RATE: &str = "4MiB";
/// Bound on any one download in these tests.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The index's one-line reason for ranking `peer_id` as a source of
/// `file_id`, when it offers it at all.
async fn index_reason(
    cluster: &Cluster,
    token: &str,
    file_id: &str,
    peer_id: &str,
) -> Option<String> {
    cluster
        .index_client()
        .locate_sources(with_bearer(
            LocateSourcesRequest {
                file_id: file_id.into(),
                limit: 64,
                ..Default::default()
            },
            token,
        ))
        .await
        .ok()?
        .into_inner()
        .sources
        .into_iter()
        .find(|s| s.peer_id == peer_id)
        .map(|s| s.reason)
}

/// One honest complete source (alice), one hostile source claiming the same
/// file (registered as mallory), one downloader (bob): the download must
/// finish byte for byte, and a liar must be rejected and reported.
/// An honest source (alice, uploading at `honest_rate`), a hostile one
/// claiming the same file (registered as mallory) and a downloader (bob),
/// once bob has the file and it checked out byte for byte.
struct BesideALiar {
    cluster: Cluster,
    alice: p2p_tests::Agent,
    bob: p2p_tests::Agent,
    hostile: HostilePeer,
    id: String,
}

async fn download_beside_a_liar(
    misbehaviour: Misbehaviour,
    seed: u64,
    honest_rate: &str,
) -> BesideALiar {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent(
            "alice",
            AgentOptions::default().max_upload_rate(honest_rate),
        )
        .await;
    let bob = cluster.add_user_agent("bob", AgentOptions::default()).await;
    cluster.create_user("mallory", false).await;
    let original = random_file(&cluster.scratch_dir("input"), FILE_BYTES, seed);
    let id = alice.share(&original).await;
    let mallory = cluster.access_token("mallory", USER_PASSWORD).await;
    let hostile = HostilePeer::start(
        misbehaviour,
        std::fs::read(&original).expect("read the original"),
        cluster.index_client(),
        &mallory,
        &id,
        Some(cluster.loopback_identity("mallory-rogue")),
    )
    .await;

    let dest = cluster.scratch_dir("out").join("copy.bin");
    let got = tokio::time::timeout(DOWNLOAD_TIMEOUT, bob.get(&id, &dest))
        .await
        .unwrap_or_else(|_| panic!("the download hung with a {misbehaviour:?} peer"));
    assert_same_content(&original, &got);
    BesideALiar {
        cluster,
        alice,
        bob,
        hostile,
        id,
    }
}

async fn download_survives(misbehaviour: Misbehaviour, seed: u64) {
    let BesideALiar {
        cluster,
        alice,
        bob,
        hostile,
        id,
    } = download_beside_a_liar(misbehaviour, seed, HONEST_RATE).await;
    eprintln!(
        "{misbehaviour:?} peer: {} requests, {} chunks sent",
        hostile.stats().requests(),
        hostile.stats().chunks_sent()
    );
    assert!(
        hostile.stats().requests() > 0,
        "the hostile peer was never asked, so the test proves nothing"
    );

    if misbehaviour == Misbehaviour::Endless {
        // Correct data, but the stream never ends: the downloader takes what
        // it asked for and hangs up, so the server drops every stream.
        eventually(
            Duration::from_secs(15),
            "the downloader to hang up on every never-ending stream",
            || async { (hostile.stats().open_streams() == 0).then_some(()) },
        )
        .await;
    } else {
        let counters = bob.status().await.counters.unwrap_or_default();
        assert!(
            counters.chunks_rejected > 0,
            "no chunk from the {misbehaviour:?} peer was rejected: {counters:?}"
        );
        let token = cluster.access_token("bob", USER_PASSWORD).await;
        eventually(
            Duration::from_secs(15),
            "the index to record a bad report against the hostile peer",
            || async {
                let reason = index_reason(&cluster, &token, &id, hostile.peer_id()).await?;
                reason.contains("bad report").then_some(())
            },
        )
        .await;
    }

    let token = cluster.access_token("bob", USER_PASSWORD).await;
    let honest = [HonestAgent::of(&alice).await, HonestAgent::of(&bob).await];
    assert_nothing_lost(cluster.index_client(), &token, &[id], &honest).await;
}

/// One honest seeder (alice), one peer that lies on its holdings stream
/// (registered as mallory), one downloader (bob): the file is correct, the
/// liar is reported, and it is left with no open holdings stream.
async fn holdings_liar_is_reported(misbehaviour: Misbehaviour, seed: u64) {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent(
            "alice",
            AgentOptions::default().max_upload_rate(HONEST_RATE),
        )
        .await;
    let bob = cluster.add_user_agent("bob", AgentOptions::default()).await;
    cluster.create_user("mallory", false).await;
    let original = random_file(&cluster.scratch_dir("input"), FILE_BYTES, seed);
    let id = alice.share(&original).await;
    let mallory = cluster.access_token("mallory", USER_PASSWORD).await;
    let hostile = HostilePeer::start(
        misbehaviour,
        std::fs::read(&original).expect("read the original"),
        cluster.index_client(),
        &mallory,
        &id,
        Some(cluster.loopback_identity("mallory-rogue")),
    )
    .await;

    let dest = cluster.scratch_dir("out").join("copy.bin");
    let got = tokio::time::timeout(DOWNLOAD_TIMEOUT, bob.get(&id, &dest))
        .await
        .unwrap_or_else(|_| panic!("the download hung with a {misbehaviour:?} peer"));
    assert_same_content(&original, &got);
    eprintln!(
        "{misbehaviour:?} peer: {} requests, {} chunks, {} holdings updates sent",
        hostile.stats().requests(),
        hostile.stats().chunks_sent(),
        hostile.stats().updates_sent(),
    );
    assert!(
        hostile.stats().updates_sent() > 0,
        "the hostile peer's holdings stream was never opened, so the test proves nothing"
    );
    let token = cluster.access_token("bob", USER_PASSWORD).await;
    eventually(
        Duration::from_secs(15),
        "the index to record a bad report against the hostile peer",
        || async {
            let reason = index_reason(&cluster, &token, &id, hostile.peer_id()).await?;
            reason.contains("bad report").then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the downloader to hang up on the hostile holdings stream",
        || async { (hostile.stats().open_watches() == 0).then_some(()) },
    )
    .await;
    // At FLOOD_UPDATES_PER_SEC, 100 k updates is 10 s of flooding before
    // the hang-up; the downloader notices within the first 50 over its rate.
    let sent = hostile.stats().updates_sent();
    assert!(
        sent < 10 * FLOOD_UPDATES_PER_SEC,
        "{sent} holdings updates were taken from a flooding peer"
    );

    let honest = [HonestAgent::of(&alice).await, HonestAgent::of(&bob).await];
    assert_nothing_lost(cluster.index_client(), &token, &[id], &honest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_claims_chunks_it_does_not_serve_is_reported() {
    holdings_liar_is_reported(Misbehaviour::FalseClaims, 31).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_floods_holdings_updates_is_cut_off_and_reported() {
    holdings_liar_is_reported(Misbehaviour::FloodUpdates, 32).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_lists_junk_addresses_is_reported() {
    holdings_liar_is_reported(Misbehaviour::JunkPeers, 33).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_claims_chunks_it_does_not_serve_in_holdings_frames_is_reported() {
    holdings_liar_is_reported(Misbehaviour::FramedFalseClaims, 34).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_floods_holdings_frames_is_cut_off_and_reported() {
    holdings_liar_is_reported(Misbehaviour::FramedFloodUpdates, 35).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_lists_junk_addresses_in_holdings_frames_is_reported() {
    holdings_liar_is_reported(Misbehaviour::FramedJunkPeers, 36).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_are_rejected_reported_and_the_file_is_correct() {
    download_survives(Misbehaviour::WrongBytes, 61).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_chunks_are_rejected_reported_and_the_file_is_correct() {
    download_survives(Misbehaviour::ShortChunks, 62).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_for_unrequested_indexes_are_rejected_and_reported() {
    download_survives(Misbehaviour::WrongIndexes, 63).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_never_ending_chunk_stream_is_cut_off_and_the_file_is_correct() {
    download_survives(Misbehaviour::Endless, 64).await;
}

/// Streams a caller may open and never read.
const UNREAD_STREAMS: usize = 32;
/// The agent's cap on concurrent uploads in this test.
const MAX_UPLOADS: u32 = 8;
/// How much an agent's resident memory may grow while every slot is held by
/// a caller that never reads (eight streams each asking for a whole 64 MiB file could pin several times this).
const MEMORY_GROWTH_LIMIT: u64 = 96 * 1024 * 1024;
/// How long unread streams are held while memory is watched.
const HOLD: Duration = Duration::from_secs(3);
/// The agent's `--upload-stall-timeout` in that test: after it, a stream
/// nobody reads is ended and its slot freed.
const STALL_TIMEOUT: &str = "4s";

#[tokio::test(flavor = "multi_thread")]
async fn unread_streams_keep_agent_memory_bounded_and_others_are_answered_quickly() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let options = AgentOptions {
        max_uploads: Some(MAX_UPLOADS),
        env: vec![("P2P_UPLOAD_STALL_TIMEOUT".into(), STALL_TIMEOUT.into())],
        ..AgentOptions::default()
    };
    let alice = cluster.add_user_agent("alice", options).await;
    let original = random_file(&cluster.scratch_dir("input"), 64 * 1024 * 1024, 65);
    let id = alice.share(&original).await;
    let info = alice
        .network_file(&id)
        .await
        .and_then(|f| f.file)
        .expect("shared file listed");
    let pid = agent_pid(&alice).expect("find alice's process");
    let (baseline, _) = memory_bytes(pid).expect("read alice's memory");
    cluster.create_user("bob", false).await;
    let alice_id = alice.status().await.peer_id;
    let creds = cluster
        .peer_credentials("bob", USER_PASSWORD, &alice_id)
        .await;
    let everything = FetchChunksRequest {
        file_id: id.clone(),
        ranges: vec![ChunkRange {
            start: 0,
            count: info.chunk_count.min(1024),
        }],
        ..Default::default()
    };

    // Each unread stream on its own connection, as separate attackers
    // would; the response (headers) arrives, the body is never read.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..UNREAD_STREAMS {
        let mut client = cluster.peer_client(alice.peer_addr());
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.fetch_chunks(creds.request(everything.clone())),
        )
        .await
        .expect("the agent answered a FetchChunks call within 5 s");
        match answer {
            Ok(stream) => held.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(started.elapsed() < Duration::from_secs(2));
                refused += 1;
            }
        }
    }
    assert!(
        held.len() <= MAX_UPLOADS as usize,
        "{} streams admitted over a cap of {MAX_UPLOADS}",
        held.len()
    );
    assert_eq!(held.len() + refused, UNREAD_STREAMS);

    // Watch memory while the streams sit unread.
    let deadline = Instant::now() + HOLD;
    let mut peak = baseline;
    while Instant::now() < deadline {
        let (rss, _) = memory_bytes(pid).expect("alice is alive");
        peak = peak.max(rss);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} unread streams held, {refused} refused; alice's RSS {} MiB before, peak {} MiB",
        held.len(),
        baseline >> 20,
        peak >> 20
    );
    assert!(
        peak < baseline + MEMORY_GROWTH_LIMIT,
        "alice's memory grew from {} MiB to {} MiB with unread streams",
        baseline >> 20,
        peak >> 20
    );

    // A well-behaved caller is served or turned away at once, never hung.
    let mut polite = cluster.peer_client(alice.peer_addr());
    let two = FetchChunksRequest {
        file_id: id.clone(),
        ranges: vec![ChunkRange { start: 0, count: 2 }],
        ..Default::default()
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        polite.fetch_chunks(creds.request(two)),
    )
    .await
    .expect("a well-behaved caller waited over 5 s for an answer");
    match answer {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            for _ in 0..2 {
                let chunk = tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .expect("an admitted stream stalled")
                    .expect("chunk")
                    .expect("stream ended early");
                assert!(!chunk.data.is_empty());
            }
        }
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refusal took {:?}",
                started.elapsed()
            );
        }
    }

    // Callers that never read do not keep their slots: while they still
    // hold their streams open, the agent ends them after the stall timeout
    // and serves others again.
    let one = FetchChunksRequest {
        file_id: id.clone(),
        ranges: vec![ChunkRange { start: 0, count: 1 }],
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "a slot held by an unread stream to be freed",
        || {
            let one = one.clone();
            let creds = creds.clone();
            let mut client = cluster.peer_client(alice.peer_addr());
            async move {
                let mut stream = client
                    .fetch_chunks(creds.request(one))
                    .await
                    .ok()?
                    .into_inner();
                stream.message().await.ok()?.map(|_| ())
            }
        },
    )
    .await;
    drop(held);
    let carol = cluster
        .add_user_agent("carol", AgentOptions::default())
        .await;
    let got = tokio::time::timeout(
        Duration::from_secs(90),
        carol.get(&id, &cluster.scratch_dir("out").join("copy.bin")),
    )
    .await
    .expect("download after the attack");
    assert_same_content(&original, &got);

    let honest = [HonestAgent::of(&alice).await, HonestAgent::of(&carol).await];
    let token = cluster.access_token("bob", USER_PASSWORD).await;
    assert_nothing_lost(cluster.index_client(), &token, &[id], &honest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_another_deployment_is_unauthenticated() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), 512 * 1024, 66);
    let id = alice.share(&original).await;
    // Another deployment: its own auth-svc with its own signing key, and an
    // admin with the very same name and password.
    let other = Cluster::start(ClusterOptions::default()).await;
    let foreign = other.access_token(ADMIN_USER, ADMIN_PASSWORD).await;
    let alice_id = alice.status().await.peer_id;
    let foreign_peer = other
        .peer_credentials(ADMIN_USER, ADMIN_PASSWORD, &alice_id)
        .await;

    let mut peer = cluster.peer_client(alice.peer_addr());
    let fetch = FetchChunksRequest {
        file_id: id.clone(),
        ranges: vec![ChunkRange { start: 0, count: 1 }],
        ..Default::default()
    };
    let attempts = [
        ("access", with_bearer(fetch.clone(), &foreign)),
        ("peer", foreign_peer.request(fetch.clone())),
    ];
    for (what, request) in attempts {
        let refused = peer
            .fetch_chunks(request)
            .await
            .expect_err("an agent served chunks to a foreign token");
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "foreign {what} token: {refused:?}"
        );
    }

    let refused = cluster
        .index_client()
        .list_files(with_bearer(ListFilesRequest::default(), &foreign))
        .await
        .expect_err("the index answered a foreign token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let token = cluster.access_token(ADMIN_USER, ADMIN_PASSWORD).await;
    let honest = [HonestAgent::of(&alice).await];
    assert_nothing_lost(cluster.index_client(), &token, &[id], &honest).await;
}

/// One honest complete source (alice), one source that breaks the chunk
/// framing (registered as mallory), one downloader (bob): the download
/// finishes byte for byte from alice, mallory is reported, and bob holds
/// no connection to it.
async fn framing_breaker_is_dropped(misbehaviour: Misbehaviour, seed: u64) {
    // A slow loris is found out after the stall timeout (10 s): the honest
    // source must still be sending by then.
    let honest_rate = match misbehaviour {
        Misbehaviour::FramedSlowLoris => "256KiB",
        _ => HONEST_RATE,
    };
    let BesideALiar {
        cluster,
        alice,
        bob,
        hostile,
        id,
    } = download_beside_a_liar(misbehaviour, seed, honest_rate).await;
    assert!(
        hostile.stats().framed_requests() > 0,
        "the hostile peer was never sent a FETCH frame, so the test proves nothing"
    );
    if misbehaviour != Misbehaviour::FramedSlowLoris {
        let counters = bob.status().await.counters.unwrap_or_default();
        assert!(
            counters.chunks_rejected > 0,
            "nothing from the {misbehaviour:?} peer was rejected: {counters:?}"
        );
    }
    let token = cluster.access_token("bob", USER_PASSWORD).await;
    eventually(
        Duration::from_secs(15),
        "the index to record a bad report against the hostile peer",
        || async {
            let reason = index_reason(&cluster, &token, &id, hostile.peer_id()).await?;
            reason.contains("bad report").then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the downloader to close every framed connection to the hostile peer",
        || async { (hostile.stats().open_connections() == 0).then_some(()) },
    )
    .await;

    let honest = [HonestAgent::of(&alice).await, HonestAgent::of(&bob).await];
    assert_nothing_lost(cluster.index_client(), &token, &[id], &honest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_frame_drops_the_source_and_the_file_is_correct() {
    framing_breaker_is_dropped(Misbehaviour::FramedTruncated, 31).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_frame_is_refused_before_its_bytes_are_read() {
    framing_breaker_is_dropped(Misbehaviour::FramedOversized, 32).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_framed_chunk_with_the_wrong_index_is_rejected_and_reported() {
    framing_breaker_is_dropped(Misbehaviour::FramedWrongIndex, 33).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_framed_chunk_whose_bytes_do_not_match_is_rejected_and_reported() {
    framing_breaker_is_dropped(Misbehaviour::FramedWrongBytes, 34).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loris_source_is_dropped_as_stalled() {
    framing_breaker_is_dropped(Misbehaviour::FramedSlowLoris, 35).await;
}
