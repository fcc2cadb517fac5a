//! Chunks as `p2p-chunks/1` frames beside FetchChunks, across real agents
//! on loopback with TLS: two current agents move chunks as frames, and an
//! agent started with `--no-chunk-framing` (how an agent from before the
//! framing behaves) still serves current downloaders and downloads from
//! current sources, with FetchChunks. A source answers `FETCH`es sent
//! back to back in turn, as downloaders pipeline them. Holdings streams go
//! as `p2p-holdings/1` frames between current agents and over
//! WatchHoldings with an old one. Sources that break either framing are in
//! `hostile.rs`.

use p2p_tests::AgentHandle as _;

use p2p_services::framing::{self, Fetch, Hello, Kind};
use p2p_tests::{
    AgentOptions, Cluster, ClusterOptions, USER_PASSWORD, assert_same_content, random_file,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the files these tests move: several chunks.
const FILE_BYTES: usize = 3 * 1024 * 1024 + 17;

/// An upload limit under which a download of [`FILE_BYTES`] takes most of
/// a second, so its holdings streams are open well before it ends.
const SLOW: &str = "4MiB";

fn without_framing() -> AgentOptions {
    AgentOptions {
        env: vec![("P2P_NO_CHUNK_FRAMING".into(), "true".into())],
        ..AgentOptions::default()
    }
}

/// A TLS connection to `agent`'s PeerService that offers `alpn` (then
/// `h2`), checked to have chosen it, with `HELLO` sent.
async fn say_hello(
    cluster: &Cluster,
    agent: &p2p_tests::Agent,
    alpn: &[u8],
    token: String,
    proof: String,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut stream = cluster
        .tls()
        .connect_raw(agent.peer_addr(), &[alpn, b"h2"])
        .await
        .expect("connect to the agent's PeerService");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(alpn),
        "a current agent offers {}",
        String::from_utf8_lossy(alpn)
    );
    let hello = Hello { token, proof };
    stream.write_all(&hello.encode()).await.expect("send HELLO");
    stream.flush().await.expect("flush");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn current_agents_move_chunks_as_frames() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    // Slow enough that bob's holdings stream opens before the last chunk.
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default().max_upload_rate(SLOW))
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
    assert!(
        served.holdings_streams_served > 0,
        "bob never watched alice's holdings: {served:?}"
    );
    assert_eq!(
        served.holdings_streams_framed, served.holdings_streams_served,
        "every holdings stream between current agents goes as frames: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_framing_serves_and_downloads_with_fetch_chunks() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let old = cluster
        .add_user_agent("alice", without_framing().max_upload_rate(SLOW))
        .await;
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
    assert!(
        served.holdings_streams_served > 0,
        "the current agent never watched the old one's holdings: {served:?}"
    );
    assert_eq!(served.holdings_streams_framed, 0, "{served:?}");

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
    assert_eq!(served.holdings_streams_framed, 0, "{served:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hello_without_a_peer_token_is_refused_as_fetch_chunks_refuses_it() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let access = cluster.access_token("alice", USER_PASSWORD).await;

    let mut stream = say_hello(
        &cluster,
        &alice,
        framing::ALPN,
        access,
        "not.a.proof".into(),
    )
    .await;
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

/// A downloader keeps a second `FETCH` on the wire while the first is
/// answered, on the one connection it holds to a source: the source must
/// answer them in the order they arrived, each to its `END`.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_answers_fetches_sent_back_to_back_in_turn() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), FILE_BYTES, 13);
    let id = alice.share(&original).await;
    let info = alice
        .network_file(&id)
        .await
        .and_then(|f| f.file)
        .expect("shared file listed");
    let chunk = info.chunk_size_bytes as usize;
    let last = info.chunk_count - 1;
    cluster.create_user("bob", false).await;
    let alice_id = alice.status().await.peer_id;
    let creds = cluster
        .peer_credentials("bob", USER_PASSWORD, &alice_id)
        .await;

    let mut stream = say_hello(&cluster, &alice, framing::ALPN, creds.token, creds.proof).await;
    let ready = framing::read_small(&mut stream, &[Kind::Ready, Kind::Error])
        .await
        .expect("a well-formed frame")
        .expect("an answer to HELLO");
    assert_eq!(
        ready.0,
        Kind::Ready,
        "{:?}",
        String::from_utf8_lossy(&ready.1)
    );

    // Three FETCHes, all sent before any answer is read.
    let asked: [&[(u32, u32)]; 3] = [&[(3, 2)], &[(0, 1)], &[(last, 1)]];
    for ranges in asked {
        let fetch = Fetch {
            file_id: id.clone(),
            ranges: ranges.to_vec(),
            any_of: Vec::new(),
            any_count: 0,
        };
        stream.write_all(&fetch.encode()).await.expect("send FETCH");
    }
    stream.flush().await.expect("flush");

    let bytes = std::fs::read(&original).expect("read the original");
    let mut answered = Vec::new();
    for _ in asked {
        let mut chunks = Vec::new();
        loop {
            let header = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                framing::read_header(&mut stream),
            )
            .await
            .expect("a frame within 10 s")
            .expect("a well-formed frame")
            .expect("a frame before the close");
            let mut body = vec![0; header.len as usize];
            stream
                .read_exact(&mut body)
                .await
                .expect("the frame's body");
            match header.kind {
                Kind::Chunk => {
                    let (index, data) = body.split_at(framing::CHUNK_PREFIX_BYTES);
                    let index = u32::from_be_bytes(index.try_into().expect("4 bytes"));
                    let at = index as usize * chunk;
                    let end = (at + chunk).min(bytes.len());
                    assert!(data == &bytes[at..end], "chunk {index} is not the file's");
                    chunks.push(index);
                }
                Kind::End => {
                    let sent = framing::decode_end(&body).expect("an END body");
                    assert_eq!(sent as usize, chunks.len());
                    break;
                }
                other => panic!(
                    "{other:?} in an answer: {:?}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
        answered.push(chunks);
    }
    assert_eq!(answered, vec![vec![3, 4], vec![0], vec![last]]);
}

/// `p2p-holdings/1` against a real agent: after `HELLO`, a `WATCH` of a
/// file it holds is answered with its whole bitfield as the first
/// `HOLDINGS` frame; a `WATCH` of a file it does not hold, with the
/// `ERROR` WatchHoldings would answer (NOT_FOUND), and the close.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_streams_holdings_as_frames_and_refuses_files_it_does_not_hold() {
    use p2p_proto::peer::v1::{HoldingsUpdate, WatchHoldingsRequest};
    use prost::Message as _;

    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster
        .add_user_agent("alice", AgentOptions::default())
        .await;
    let original = random_file(&cluster.scratch_dir("input"), FILE_BYTES, 14);
    let id = alice.share(&original).await;
    cluster.create_user("bob", false).await;
    let alice_id = alice.status().await.peer_id;

    let watch = |file_id: String| {
        let cluster = &cluster;
        let alice = &alice;
        let alice_id = alice_id.clone();
        async move {
            let creds = cluster
                .peer_credentials("bob", USER_PASSWORD, &alice_id)
                .await;
            let mut stream = say_hello(
                cluster,
                alice,
                framing::HOLDINGS_ALPN,
                creds.token,
                creds.proof,
            )
            .await;
            let request = WatchHoldingsRequest {
                file_id,
                caller: None,
            };
            stream
                .write_all(&framing::frame(Kind::Watch, &request.encode_to_vec()))
                .await
                .expect("send WATCH");
            stream.flush().await.expect("flush");
            let ready = framing::read_small(&mut stream, &[Kind::Ready])
                .await
                .expect("READY")
                .expect("an answer to HELLO");
            assert_eq!(ready.0, Kind::Ready);
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                framing::read_small(&mut stream, &[Kind::Holdings, Kind::Error]),
            )
            .await
            .expect("an answer to WATCH")
            .expect("a well-formed frame")
            .expect("a frame before the close");
            (stream, answer)
        }
    };

    let (_stream, (kind, body)) = watch(id.clone()).await;
    assert_eq!(kind, Kind::Holdings);
    let first = HoldingsUpdate::decode(&body[..]).expect("a HoldingsUpdate");
    assert!(first.complete, "alice holds the whole file: {first:?}");

    let unheld = "b".repeat(64);
    let (mut stream, (kind, body)) = watch(unheld).await;
    assert_eq!(kind, Kind::Error);
    let (code, message) = framing::decode_error(&body).expect("an ERROR body");
    assert_eq!(code, tonic::Code::NotFound as i32, "{message}");
    let after = framing::read_small(&mut stream, &[Kind::Holdings, Kind::Error]).await;
    assert!(matches!(after, Ok(None) | Err(_)), "{after:?}");
}
