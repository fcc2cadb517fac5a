//! Chunks as `p2p-chunks/1` frames beside FetchChunks, across real agents
//! on loopback with TLS: two current agents move chunks as frames, and an
//! agent started with `--no-chunk-framing` (how an agent from before the
//! framing behaves) still serves current downloaders and downloads from
//! current sources, with FetchChunks. Sources that break the framing are
//! in `hostile.rs`.

use p2p_tests::AgentHandle as _;

use p2p_services::framing::{self, Hello, Kind};
use p2p_tests::{
    AgentOptions, Cluster, ClusterOptions, USER_PASSWORD, assert_same_content, random_file,
};
use tokio::io::AsyncWriteExt;

/// Size of the files these tests move: several chunks.
const FILE_BYTES: usize = 3 * 1024 * 1024 + 17;

fn without_framing() -> AgentOptions {
    AgentOptions {
        env: vec![("P2P_NO_CHUNK_FRAMING".into(), "true".into())],
        ..AgentOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn current_agents_move_chunks_as_frames() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let bob = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let original = random_file(&cluster.scratch_dir("input"), FILE_BYTES, 11);
    let id = alice.share(&original).await;

    let got = bob
        .get(&id, &cluster.scratch_dir("out").join("copy.bin"))
        .await;
    assert_same_content(&original, &got);
    let served = alice.status().await.counters.unwrap_or_default();
    assert!(served.chunks_served > 0, "alice served nothing: {served:?}");
    assert_eq!(
        served.chunks_served_framed, served.chunks_served,
        "every chunk between current agents goes as a frame: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_framing_serves_and_downloads_with_fetch_chunks() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let old = cluster.add_user_agent("alice", without_framing()).await;
    let current = cluster.add_user_agent("bob", AgentOptions::default()).await;
    let input = cluster.scratch_dir("input");

    // A current downloader falls back to FetchChunks for an old source.
    let first = random_file(&input, FILE_BYTES, 12);
    let id = old.share(&first).await;
    let got = current
        .get(&id, &cluster.scratch_dir("out1").join("copy.bin"))
        .await;
    assert_same_content(&first, &got);
    let served = old.status().await.counters.unwrap_or_default();
    assert!(
        served.chunks_served > 0,
        "the old agent served nothing: {served:?}"
    );
    assert_eq!(served.chunks_served_framed, 0, "{served:?}");

    // An old downloader asks a current source with FetchChunks.
    let second = random_file(&input, FILE_BYTES, 13);
    let id = current.share(&second).await;
    let got = old
        .get(&id, &cluster.scratch_dir("out2").join("copy.bin"))
        .await;
    assert_same_content(&second, &got);
    let served = current.status().await.counters.unwrap_or_default();
    assert!(
        served.chunks_served > 0,
        "the current agent served nothing: {served:?}"
    );
    assert_eq!(served.chunks_served_framed, 0, "{served:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hello_without_a_peer_token_is_refused_as_fetch_chunks_refuses_it() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let access = cluster.access_token("alice", USER_PASSWORD).await;

    let mut stream = cluster
        .tls()
        .connect_raw(alice.peer_addr(), &[framing::ALPN, b"h2"])
        .await
        .expect("connect to alice's PeerService");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(framing::ALPN),
        "a current agent offers the framing"
    );
    let hello = Hello {
        token: access,
        proof: "not.a.proof".into(),
    };
    stream.write_all(&hello.encode()).await.expect("send HELLO");
    stream.flush().await.expect("flush");
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        framing::read_small(&mut stream, &[Kind::Ready, Kind::Error]),
    )
    .await
    .expect("an answer to HELLO")
    .expect("a well-formed frame")
    .expect("a frame before the close");
    assert_eq!(
        answer.0,
        Kind::Error,
        "an access token opened the data path"
    );
    let (code, message) = framing::decode_error(&answer.1).expect("an ERROR body");
    assert_eq!(code, tonic::Code::Unauthenticated as i32, "{message}");
    assert!(
        message.starts_with("wrong credential: this service takes a peer token"),
        "{message}"
    );
    // The source closes the connection after refusing it.
    let after = framing::read_small(&mut stream, &[Kind::Ready, Kind::Error]).await;
    assert!(matches!(after, Ok(None) | Err(_)), "{after:?}");
}
