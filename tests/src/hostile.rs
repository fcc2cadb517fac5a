//! A misbehaving PeerService for tests: a tonic server on loopback that is
//! registered at the index as a peer of a real user and claims to hold a
//! file completely, then answers FetchChunks with wrong bytes, short
//! chunks, chunks for indexes nobody asked for, or a stream that never
//! ends; or lies on its holdings stream (`WatchHoldings`): claims chunks it
//! does not serve, floods updates, lists junk peer addresses; or speaks
//! the chunk framing (`p2p-chunks/1`) and breaks it: a truncated frame, an
//! oversized one, the wrong chunk, wrong bytes, or a frame dripped a byte
//! at a time (slow loris); or tells its holdings lies as `p2p-holdings/1`
//! frames.
//!
//! Ownership: a [`HostilePeer`] owns its server task and its heartbeat task
//! in a `JoinSet`; both are aborted when it drops (the server is also told
//! to shut down first), so a test leaves nothing running.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use p2p_proto::index::v1::index_service_client::IndexServiceClient;
use p2p_proto::index::v1::{
    GetFileRequest, HeartbeatRequest, RegisterPeerRequest, UpdateHoldingsRequest,
};
use p2p_proto::peer::v1::peer_service_server::{PeerService, PeerServiceServer};
use p2p_proto::peer::v1::{
    Chunk, FetchChunksRequest, HoldingsUpdate, PeerHint, WatchHoldingsRequest,
};
use p2p_services::client::with_bearer;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How the peer lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// The chunk asked for, full length, every byte flipped.
    WrongBytes,
    /// The chunk asked for, cut to half its length.
    ShortChunks,
    /// A genuine chunk, but the one after the one asked for.
    WrongIndexes,
    /// The chunks asked for, then the last one again, forever.
    Endless,
    /// Genuine chunks: a rogue that only records the credentials its
    /// callers present.
    Honest,
    /// Registered at the index with chunk 0 only, which it serves; claims
    /// every chunk on its holdings stream and answers NOT_FOUND for the rest.
    FalseClaims,
    /// Genuine chunks, but holdings updates at [`FLOOD_UPDATES_PER_SEC`],
    /// 400 times what a downloader accepts.
    FloodUpdates,
    /// Genuine chunks, and every update lists junk peer addresses.
    JunkPeers,
    /// Speaks the chunk framing (`p2p-chunks/1`) and cuts the connection
    /// in the middle of the first chunk frame.
    FramedTruncated,
    /// Speaks the framing and announces a chunk frame of 64 MiB, far
    /// longer than the chunk asked for, then sends nothing more.
    FramedOversized,
    /// Speaks the framing and sends the genuine chunk after the one asked
    /// for, with that chunk's index and length.
    FramedWrongIndex,
    /// Speaks the framing and sends the chunk asked for, its length right,
    /// every byte flipped.
    FramedWrongBytes,
    /// Speaks the framing and sends the first chunk's frame one byte every
    /// [`SLOW_LORIS_GAP`].
    FramedSlowLoris,
    /// [`Self::FalseClaims`], its holdings stream as `p2p-holdings/1`
    /// frames.
    FramedFalseClaims,
    /// [`Self::FloodUpdates`], as `p2p-holdings/1` frames.
    FramedFloodUpdates,
    /// [`Self::JunkPeers`], as `p2p-holdings/1` frames.
    FramedJunkPeers,
}

/// How long a [`Misbehaviour::FramedSlowLoris`] peer waits between bytes.
pub const SLOW_LORIS_GAP: Duration = Duration::from_millis(200);

impl Misbehaviour {
    /// The lie, and whether the peer tells its holdings stream as
    /// `p2p-holdings/1` frames (and not over gRPC).
    fn holdings_framed(self) -> (Self, bool) {
        match self {
            Self::FramedFalseClaims => (Self::FalseClaims, true),
            Self::FramedFloodUpdates => (Self::FloodUpdates, true),
            Self::FramedJunkPeers => (Self::JunkPeers, true),
            other => (other, false),
        }
    }

    /// Whether the peer lies in `p2p-chunks/1` frames (and answers
    /// FetchChunks honestly).
    pub fn is_framed(self) -> bool {
        matches!(
            self,
            Self::FramedTruncated
                | Self::FramedOversized
                | Self::FramedWrongIndex
                | Self::FramedWrongBytes
                | Self::FramedSlowLoris
        )
    }
}

/// How fast a [`Misbehaviour::FloodUpdates`] peer sends (in bursts of 100).
/// Fixed rather than as fast as the stream takes them, so that how many
/// it got out before the hang-up measures how long the downloader took to
/// hang up, not how fast this machine runs the flooder: on a loaded
/// machine an unpaced flood got 8–115 k updates out in the same time.
pub const FLOOD_UPDATES_PER_SEC: u64 = 10_000;

/// Addresses no agent may dial because a peer said so.
pub const JUNK_ADDRESSES: [&str; 8] = [
    "169.254.169.254:80",
    "0.0.0.0:7000",
    "evil.example:443",
    "224.0.0.1:7000",
    "255.255.255.255:7000",
    "[fe80::1]:7000",
    "10.0.0.1:0",
    "not an address",
];

/// Most credentials a hostile peer keeps.
const MAX_RECORDED_CREDENTIALS: usize = 64;

/// What the hostile peer saw and did, for assertions.
#[derive(Debug, Default)]
pub struct HostileStats {
    /// FetchChunks calls received.
    pub requests: AtomicU64,
    /// Chunk messages produced.
    pub chunks_sent: AtomicU64,
    /// Streams not yet dropped by the server (the caller went away or the
    /// stream ended).
    pub open_streams: AtomicI64,
    /// The `authorization` and peer-proof values callers sent, first ones
    /// first.
    pub credentials: std::sync::Mutex<Vec<(String, Option<String>)>>,
    /// Holdings updates produced.
    pub updates_sent: AtomicU64,
    /// Holdings streams not yet dropped by the server.
    pub open_watches: AtomicI64,
    /// `FETCH` frames received.
    pub framed_requests: AtomicU64,
    /// Framed connections not yet closed.
    pub open_connections: AtomicI64,
}

impl HostileStats {
    /// FetchChunks calls received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Streams still open.
    pub fn open_streams(&self) -> i64 {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Chunk messages produced so far.
    pub fn chunks_sent(&self) -> u64 {
        self.chunks_sent.load(Ordering::Relaxed)
    }

    /// Holdings updates produced so far.
    pub fn updates_sent(&self) -> u64 {
        self.updates_sent.load(Ordering::Relaxed)
    }

    /// Holdings streams still open.
    pub fn open_watches(&self) -> i64 {
        self.open_watches.load(Ordering::Relaxed)
    }

    /// `FETCH` frames received so far.
    pub fn framed_requests(&self) -> u64 {
        self.framed_requests.load(Ordering::Relaxed)
    }

    /// Framed connections not yet closed.
    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// The bearer tokens callers sent so far, each with the peer proof
    /// that came with it.
    pub fn recorded_credentials(&self) -> Vec<(String, Option<String>)> {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(auth, proof)| {
                auth.strip_prefix("Bearer ")
                    .map(|t| (t.to_string(), proof.clone()))
            })
            .collect()
    }
}

#[derive(Clone)]
struct HostileService {
    misbehaviour: Misbehaviour,
    /// Tells its holdings lies only as `p2p-holdings/1` frames; its
    /// WatchHoldings is then UNIMPLEMENTED, so a test sees which path ran.
    framed_holdings: bool,
    content: Arc<Vec<u8>>,
    chunk_size: usize,
    stats: Arc<HostileStats>,
}

impl HostileService {
    /// Whether the peer lies on its holdings stream.
    fn lies_on_holdings(&self) -> bool {
        matches!(
            self.misbehaviour,
            Misbehaviour::FalseClaims | Misbehaviour::FloodUpdates | Misbehaviour::JunkPeers
        )
    }

    /// The holdings stream it sends, over gRPC or as frames: counted open
    /// while it lasts.
    fn lying_updates(&self) -> impl Stream<Item = HoldingsUpdate> + Send + 'static {
        let misbehaviour = self.misbehaviour;
        self.stats.open_watches.fetch_add(1, Ordering::Relaxed);
        let guard = OpenWatch(self.stats.clone());
        let stats = self.stats.clone();
        futures::stream::unfold((0u64, guard), move |(n, guard)| {
            let stats = stats.clone();
            async move {
                let mut update = HoldingsUpdate {
                    complete: n == 0,
                    ..Default::default()
                };
                match misbehaviour {
                    Misbehaviour::FloodUpdates => {
                        if n > 0 {
                            update.have = vec![0];
                        }
                        if n > 0 && n % 100 == 0 {
                            tokio::time::sleep(Duration::from_millis(
                                100_000 / FLOOD_UPDATES_PER_SEC,
                            ))
                            .await;
                        }
                    }
                    Misbehaviour::JunkPeers => {
                        if n > 0 {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                        update.peers = junk_peers();
                    }
                    _ => {
                        if n > 0 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                stats.updates_sent.fetch_add(1, Ordering::Relaxed);
                Some((update, (n + 1, guard)))
            }
        })
    }

    fn chunk_count(&self) -> u32 {
        self.content.len().div_ceil(self.chunk_size) as u32
    }

    fn genuine(&self, index: u32) -> Vec<u8> {
        let start = (index as usize * self.chunk_size).min(self.content.len());
        let end = (start + self.chunk_size).min(self.content.len());
        self.content[start..end].to_vec()
    }

    /// The lie told for the chunk asked for.
    fn answer(&self, index: u32) -> Chunk {
        match self.misbehaviour {
            Misbehaviour::WrongBytes => Chunk {
                index,
                data: self.genuine(index).into_iter().map(|b| b ^ 0x5a).collect(),
            },
            Misbehaviour::ShortChunks => {
                let mut data = self.genuine(index);
                data.truncate(data.len() / 2);
                Chunk {
                    index,
                    data: data.into(),
                }
            }
            Misbehaviour::WrongIndexes => {
                let other = (index + 1) % self.chunk_count();
                Chunk {
                    index: other,
                    data: self.genuine(other).into(),
                }
            }
            Misbehaviour::Endless
            | Misbehaviour::Honest
            | Misbehaviour::FalseClaims
            | Misbehaviour::FloodUpdates
            | Misbehaviour::JunkPeers
            | Misbehaviour::FramedTruncated
            | Misbehaviour::FramedOversized
            | Misbehaviour::FramedWrongIndex
            | Misbehaviour::FramedWrongBytes
            | Misbehaviour::FramedSlowLoris
            | Misbehaviour::FramedFalseClaims
            | Misbehaviour::FramedFloodUpdates
            | Misbehaviour::FramedJunkPeers => Chunk {
                index,
                data: self.genuine(index).into(),
            },
        }
    }
}

/// Decrements the open-stream count when the server drops a stream.
struct OpenStream(Arc<HostileStats>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the open-watch count when the server drops a holdings stream.
struct OpenWatch(Arc<HostileStats>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

fn junk_peers() -> Vec<PeerHint> {
    JUNK_ADDRESSES
        .iter()
        .enumerate()
        .map(|(i, address)| PeerHint {
            peer_id: format!("junk-{i}"),
            address: (*address).to_string(),
        })
        .collect()
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;
type UpdateStream = Pin<Box<dyn Stream<Item = Result<HoldingsUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl PeerService for HostileService {
    type FetchChunksStream = ChunkStream;
    type WatchHoldingsStream = UpdateStream;

    async fn watch_holdings(
        &self,
        _request: Request<WatchHoldingsRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        if !self.lies_on_holdings() || self.framed_holdings {
            return Err(Status::unimplemented(
                "this peer does not watch holdings over gRPC",
            ));
        }
        let stream = futures::StreamExt::map(self.lying_updates(), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_chunks(
        &self,
        request: Request<FetchChunksRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(value) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            let mut recorded = self
                .stats
                .credentials
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if recorded.len() < MAX_RECORDED_CREDENTIALS {
                let proof = request
                    .metadata()
                    .get(p2p_services::client::PEER_PROOF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                recorded.push((value.to_string(), proof));
            }
        }
        let count = self.chunk_count();
        if self.misbehaviour == Misbehaviour::FalseClaims {
            let request = request.get_ref();
            if let Some(r) = request.ranges.iter().find(|r| r.start > 0 || r.count > 1) {
                let chunk = r.start.max(1);
                return Err(Status::not_found(format!(
                    "this agent does not hold chunk {chunk} of file {}",
                    request.file_id
                )));
            }
        }
        let asked: Vec<u32> = request
            .into_inner()
            .ranges
            .iter()
            .flat_map(|r| r.start..r.start.saturating_add(r.count.min(1024)))
            .filter(|&i| i < count)
            .take(1024)
            .collect();
        let Some(&last) = asked.last() else {
            return Err(Status::invalid_argument("no chunks asked for"));
        };
        self.stats.open_streams.fetch_add(1, Ordering::Relaxed);
        let guard = OpenStream(self.stats.clone());
        let service = self.clone();
        let stream = futures::stream::unfold((0usize, guard), move |(n, guard)| {
            let service = service.clone();
            let asked = asked.clone();
            async move {
                let index = match asked.get(n) {
                    Some(&index) => index,
                    None if service.misbehaviour == Misbehaviour::Endless => last,
                    None => return None,
                };
                service.stats.chunks_sent.fetch_add(1, Ordering::Relaxed);
                Some((Ok(service.answer(index)), (n + 1, guard)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl HostileService {
    /// Serves the framed connections handed over until `connections`
    /// closes (`p2p-chunks/1` or `p2p-holdings/1`, told apart by ALPN),
    /// each in a task of its own set (aborted when this ends).
    async fn serve_framed(
        self,
        mut connections: tokio::sync::mpsc::Receiver<
            tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        >,
    ) {
        let mut tasks = JoinSet::new();
        while let Some(stream) = connections.recv().await {
            let service = self.clone();
            let protocol = p2p_services::tls::server::negotiated(&stream);
            if protocol == Some(p2p_services::framing::HOLDINGS_ALPN) {
                tasks.spawn(async move { service.framed_holdings(stream).await });
            } else {
                tasks.spawn(async move { service.framed_connection(stream).await });
            }
        }
    }

    /// Takes any `HELLO` and answers `READY`; false when the connection
    /// ended first.
    async fn take_hello(
        mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ) -> bool {
        use p2p_services::framing::{self, Kind};
        use tokio::io::AsyncWriteExt;
        let Ok(Some(_)) = framing::read_small(&mut stream, &[Kind::Hello]).await else {
            return false;
        };
        stream.write_all(&framing::ready()).await.is_ok() && stream.flush().await.is_ok()
    }

    /// One `p2p-holdings/1` connection: takes any `HELLO` and `WATCH`,
    /// then writes its lying updates as `HOLDINGS` frames until the
    /// downloader hangs up.
    async fn framed_holdings(
        &self,
        mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ) {
        use p2p_services::framing::{self, Kind};
        use prost::Message as _;
        use tokio::io::AsyncWriteExt;
        if !Self::take_hello(&mut stream).await {
            return;
        }
        let Ok(Some(_)) = framing::read_small(&mut stream, &[Kind::Watch]).await else {
            return;
        };
        let mut updates = std::pin::pin!(self.lying_updates());
        while let Some(update) = futures::StreamExt::next(&mut updates).await {
            let frame = framing::frame(Kind::Holdings, &update.encode_to_vec());
            if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
    }

    /// One framed connection: takes any `HELLO`, then lies in its answer
    /// to the first `FETCH` and holds the connection (or closes it).
    async fn framed_connection(
        &self,
        mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ) {
        use p2p_services::framing::{self, Fetch, Kind};
        use tokio::io::AsyncWriteExt;
        self.stats.open_connections.fetch_add(1, Ordering::Relaxed);
        let _open = OpenConnection(self.stats.clone());
        if !Self::take_hello(&mut stream).await {
            return;
        }
        let Ok(Some((_, body))) = framing::read_small(&mut stream, &[Kind::Fetch]).await else {
            return;
        };
        let Ok(fetch) = Fetch::decode(&body) else {
            return;
        };
        self.stats.framed_requests.fetch_add(1, Ordering::Relaxed);
        let count = self.chunk_count();
        let asked = fetch
            .ranges
            .first()
            .map(|&(start, _)| start)
            .or_else(|| {
                (0..count).find(|&i| {
                    fetch
                        .any_of
                        .get(i as usize / 8)
                        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
                })
            })
            .unwrap_or(0)
            .min(count.saturating_sub(1));
        let genuine = self.genuine(asked);
        let frame = |index: u32, data: &[u8]| {
            let mut out = framing::chunk_prefix(index, data.len() as u32).to_vec();
            out.extend_from_slice(data);
            out
        };
        let bytes = match self.misbehaviour {
            Misbehaviour::FramedTruncated => {
                let whole = frame(asked, &genuine);
                whole[..whole.len() / 2].to_vec()
            }
            Misbehaviour::FramedOversized => {
                framing::chunk_prefix(asked, p2p_services::manifest::MAX_CHUNK_BYTES).to_vec()
            }
            Misbehaviour::FramedWrongIndex => {
                // A chunk not asked for: the next one for named chunks, one
                // the caller does not lack for "any n" (or one past the
                // end when it lacks them all).
                let offered = |i: u32| {
                    fetch
                        .any_of
                        .get(i as usize / 8)
                        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
                };
                let other = if fetch.ranges.is_empty() {
                    (0..count).find(|&i| !offered(i)).unwrap_or(count)
                } else {
                    (asked + 1) % count
                };
                frame(other, &self.genuine(other.min(count - 1)))
            }
            Misbehaviour::FramedWrongBytes => {
                let flipped: Vec<u8> = genuine.iter().map(|b| b ^ 0x5a).collect();
                frame(asked, &flipped)
            }
            Misbehaviour::FramedSlowLoris => {
                let whole = frame(asked, &genuine);
                for byte in whole {
                    if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(SLOW_LORIS_GAP).await;
                }
                return;
            }
            _ => return,
        };
        self.stats.chunks_sent.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        if self.misbehaviour == Misbehaviour::FramedTruncated {
            let _ = stream.shutdown().await;
            return;
        }
        // Hold the connection until the downloader hangs up.
        let mut sink = [0u8; 1024];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Decrements the open-connection count when a framed connection ends.
struct OpenConnection(Arc<HostileStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A hostile peer registered at the index as a complete holder of one file.
pub struct HostilePeer {
    addr: SocketAddr,
    peer_id: String,
    stats: Arc<HostileStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _tasks: JoinSet<()>,
}

impl HostilePeer {
    /// Serves `content` (the genuine bytes of `file_id`) the way
    /// `misbehaviour` says, registers at the index with `token` (a real
    /// user's access token), claims to hold the whole file, and heartbeats
    /// every second until dropped.
    ///
    /// # Panics
    /// When the index refuses the registration or the claim.
    pub async fn start(
        misbehaviour: Misbehaviour,
        content: Vec<u8>,
        mut index: IndexServiceClient<Channel>,
        token: &str,
        file_id: &str,
        tls: Option<p2p_services::tls::ServerTls>,
    ) -> HostilePeer {
        let manifest = index
            .get_file(with_bearer(
                GetFileRequest {
                    file_id: file_id.into(),
                },
                token,
            ))
            .await
            .unwrap_or_else(|s| panic!("get file {file_id}: {s}"))
            .into_inner()
            .manifest
            .expect("GetFile carries the manifest");
        let stats = Arc::new(HostileStats::default());
        let (lie, framed_holdings) = misbehaviour.holdings_framed();
        let service = HostileService {
            misbehaviour: lie,
            framed_holdings,
            content: Arc::new(content),
            chunk_size: manifest.chunk_size_bytes as usize,
            stats: stats.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the hostile peer");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut tasks = JoinSet::new();
        let server = p2p_services::serve::GrpcServer::new().tls(tls);
        let (framed_tx, framed_rx) = tokio::sync::mpsc::channel(8);
        let mut server = server;
        if misbehaviour.is_framed() {
            server = server.beside(p2p_services::framing::ALPN, framed_tx.clone(), None);
        }
        if framed_holdings {
            server = server.beside(p2p_services::framing::HOLDINGS_ALPN, framed_tx, None);
        }
        tasks.spawn(service.clone().serve_framed(framed_rx));
        tasks.spawn(async move {
            let server =
                server
                    .add_service(PeerServiceServer::new(service))
                    .serve(listener, async {
                        let _ = stopped.await;
                    });
            if let Err(err) = server.await {
                eprintln!("hostile peer server failed: {err}");
            }
        });

        let peer_id = index
            .register_peer(with_bearer(
                RegisterPeerRequest {
                    advertise_addr: addr.to_string(),
                    load: None,
                    agent_version: format!("hostile {misbehaviour:?}"),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_or_else(|s| panic!("register the hostile peer: {s}"))
            .into_inner()
            .peer_id;
        index
            .update_holdings(with_bearer(
                if lie == Misbehaviour::FalseClaims {
                    let mut first = vec![
                        0u8;
                        (manifest
                            .size_bytes
                            .div_ceil(manifest.chunk_size_bytes.max(1).into())
                            as usize)
                            .div_ceil(8)
                    ];
                    first[0] = 0x80;
                    UpdateHoldingsRequest {
                        peer_id: peer_id.clone(),
                        file_id: file_id.into(),
                        bitfield: first,
                        complete: false,
                    }
                } else {
                    UpdateHoldingsRequest {
                        peer_id: peer_id.clone(),
                        file_id: file_id.into(),
                        bitfield: Vec::new(),
                        complete: true,
                    }
                },
                token,
            ))
            .await
            .unwrap_or_else(|s| panic!("claim the file for the hostile peer: {s}"));

        let (token, id) = (token.to_string(), peer_id.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let request = HeartbeatRequest {
                    peer_id: id.clone(),
                    load: None,
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    index.heartbeat(with_bearer(request, &token)),
                )
                .await;
            }
        });
        HostilePeer {
            addr,
            peer_id,
            stats,
            stop: Some(stop),
            _tasks: tasks,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its peer id at the index.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// What it saw and did.
    pub fn stats(&self) -> &HostileStats {
        &self.stats
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The pid of a loopback [`crate::Agent`]'s process, found by its data dir
/// in the environment of the running processes (the agent is started with
/// `P2P_DATA_DIR` set to a dir no other process uses).
pub fn agent_pid(agent: &crate::Agent) -> Option<u32> {
    let needle = format!(
        "P2P_DATA_DIR={}",
        crate::AgentHandle::data_dir(agent).display()
    );
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
}

/// A process's resident memory now (`VmRSS`) and at its peak (`VmHWM`),
/// in bytes.
pub fn memory_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
