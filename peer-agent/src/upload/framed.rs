//! The source end of the chunk framing (`p2p-chunks/1`, the contract is
//! `proto/proto/p2p/peer/v1/chunks.md`, the codec
//! `p2p_services::framing`): the PeerService's TLS listener hands over
//! the connections that chose it by ALPN, and [`serve`] answers them.
//!
//! A connection proves its credentials once, with `HELLO` (the same peer
//! token and proof FetchChunks carries, checked by the same
//! `TokenVerifier::verify_peer`), within the handshake timeout; then each
//! `FETCH` is checked, limited and read exactly as a FetchChunks call is
//! ([`super::Uploads::open`] and [`super::UploadStream`]), and answered
//! with `CHUNK` frames written straight from the chunk read from disk, then
//! `END`, or `ERROR` with the status FetchChunks would have returned. The
//! credentials are good for [`PEER_PROOF_TTL`] after `HELLO` (or until the
//! token expires, if sooner); a connection idle for [`IDLE_TIMEOUT`], or
//! whose caller stops reading for the stall timeout, is closed.
//!
//! The same listener hands over `p2p-holdings/1` connections, the holdings
//! stream as frames: after `HELLO`, one `WATCH` (a `WatchHoldingsRequest`)
//! admitted by [`Uploads::watch`] as the gRPC call is, then
//! [`super::exchange::serve_updates`] writes each update as a `HOLDINGS`
//! frame until either end closes. The credentials are checked once, when
//! the stream opens, as for the gRPC call.
//!
//! Ownership: [`serve`] owns every connection's task in one of two
//! `JoinSet`s, at most [`MAX_CONNECTIONS`] chunk connections and
//! [`super::MAX_WATCHERS`] holdings connections at once, and stops them
//! all on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_proto::peer::v1::{HoldingsUpdate, WatchHoldingsRequest};
use p2p_services::auth::{PEER_PROOF_TTL, PeerIdentity, TokenVerifier};
use p2p_services::framing::{self, Fetch, Hello, Kind};
use p2p_services::tls::server::negotiated;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::exchange::{UpdateSink, serve_updates};
use super::{Ask, Uploads};

/// What the listener hands over.
type Stream = tokio_rustls::server::TlsStream<TcpStream>;

/// Most chunk connections served at once; more are closed at once.
/// Holdings connections have their own cap, [`super::MAX_WATCHERS`].
pub const MAX_CONNECTIONS: usize = 512;
/// A connection that sends no `FETCH` for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A holdings connection whose updates go unacknowledged this long is
/// closed: its watcher is gone (it would drop us after
/// [`crate::exchange::SILENT_DROP`] anyway).
pub const WATCHER_GONE: Duration = Duration::from_secs(30);
/// How many handed-over connections may wait for [`serve`] to take them.
pub const QUEUE: usize = 64;

/// What every framed connection needs.
#[derive(Clone)]
pub struct FramedServer {
    /// The limits and holdings FetchChunks uses.
    pub uploads: Arc<Uploads>,
    /// Checks the `HELLO`'s token and proof.
    pub verifier: TokenVerifier,
    /// Who we are: the proof must name us.
    pub identity: PeerIdentity,
}

/// Serves the connections handed over on `connections` (of either
/// protocol, told apart by ALPN) until `shutdown`.
pub async fn serve(
    server: FramedServer,
    mut connections: mpsc::Receiver<Stream>,
    shutdown: CancellationToken,
) {
    // Chunk and holdings connections are capped apart, as FetchChunks
    // streams and WatchHoldings streams are: a swarm's holdings streams
    // must not crowd out its chunks.
    let mut chunks = tokio::task::JoinSet::new();
    let mut holdings = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = chunks.join_next(), if !chunks.is_empty() => {}
            Some(_) = holdings.join_next(), if !holdings.is_empty() => {}
            next = connections.recv() => {
                let Some(stream) = next else { break };
                let server = server.clone();
                if negotiated(&stream) == Some(framing::HOLDINGS_ALPN) {
                    if holdings.len() >= super::MAX_WATCHERS {
                        tracing::debug!("too many holdings connections; closing a new one");
                        continue;
                    }
                    holdings.spawn(async move { server.holdings(stream).await });
                } else {
                    if chunks.len() >= MAX_CONNECTIONS {
                        tracing::debug!("too many framed connections; closing a new one");
                        continue;
                    }
                    chunks.spawn(async move { server.connection(stream).await });
                }
            }
        }
    }
    chunks.shutdown().await;
    holdings.shutdown().await;
}

impl FramedServer {
    /// One connection, from `HELLO` to its close.
    async fn connection<S>(&self, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some((until, caller)) = self.hello(&mut stream).await else {
            let _ = stream.shutdown().await;
            return;
        };
        loop {
            let body = match tokio::time::timeout(
                IDLE_TIMEOUT,
                framing::read_small(&mut stream, &[Kind::Fetch]),
            )
            .await
            {
                Ok(Ok(Some((_, body)))) => body,
                Ok(Ok(None)) => return,
                Ok(Err(err)) => {
                    tracing::debug!(%err, "framed connection: bad frame; closing");
                    let status = Status::invalid_argument(err.to_string());
                    let _ = send(&mut stream, &error_frame(&status)).await;
                    return;
                }
                Err(_) => {
                    tracing::debug!("framed connection idle; closing");
                    return;
                }
            };
            if Instant::now() >= until {
                let status = Status::unauthenticated(
                    "this connection's peer proof has expired; connect again with a new one",
                );
                let _ = send(&mut stream, &error_frame(&status)).await;
                return;
            }
            let fetch = match Fetch::decode(&body) {
                Ok(fetch) => fetch,
                Err(err) => {
                    let status = Status::invalid_argument(err.to_string());
                    let _ = send(&mut stream, &error_frame(&status)).await;
                    return;
                }
            };
            if !self.answer(&mut stream, &fetch, &caller).await {
                return;
            }
        }
    }

    /// One `p2p-holdings/1` connection: `HELLO`, `WATCH`, then `HOLDINGS`
    /// frames until either end closes, or `ERROR` when the watch is not
    /// admitted.
    async fn holdings(&self, mut stream: Stream) {
        let from = stream.get_ref().0.peer_addr().ok().map(|a| a.ip());
        // Keepalives alone never fill the socket buffer, so a watcher that
        // vanished would otherwise hold its stream until TCP gives up.
        if let Err(err) =
            p2p_services::tls::server::close_unacknowledged_after(stream.get_ref().0, WATCHER_GONE)
        {
            tracing::debug!(%err, "cannot bound a holdings connection's unacknowledged data");
        }
        if self.hello(&mut stream).await.is_some() {
            let read = tokio::time::timeout(
                p2p_services::tls::HANDSHAKE_TIMEOUT,
                framing::read_small(&mut stream, &[Kind::Watch]),
            )
            .await;
            let watch = match read {
                Ok(Ok(Some((_, body)))) => WatchHoldingsRequest::decode(&body[..])
                    .map_err(|e| Status::invalid_argument(format!("malformed WATCH frame: {e}")))
                    .and_then(|request| self.uploads.watch(&request, from)),
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(err)) => Err(Status::invalid_argument(err.to_string())),
            };
            match watch {
                Ok(watch) => {
                    self.uploads.stats.holdings_stream_served(true);
                    serve_updates(watch, FramedUpdates(&mut stream)).await;
                }
                Err(status) => {
                    let _ = send(&mut stream, &error_frame(&status)).await;
                }
            }
        }
        let _ = tokio::time::timeout(p2p_services::tls::HANDSHAKE_TIMEOUT, stream.shutdown()).await;
    }

    /// Reads and checks `HELLO`, answers `READY` or `ERROR`; the instant
    /// the credentials stop being good for this connection, and the
    /// calling agent's key.
    async fn hello<S>(&self, stream: &mut S) -> Option<(Instant, String)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let read = tokio::time::timeout(
            p2p_services::tls::HANDSHAKE_TIMEOUT,
            framing::read_small(stream, &[Kind::Hello]),
        )
        .await;
        let hello = match read {
            Ok(Ok(Some((_, body)))) => Hello::decode(&body),
            Ok(Ok(None)) | Err(_) => return None,
            Ok(Err(err)) => Err(err),
        };
        let hello = match hello {
            Ok(hello) => hello,
            Err(err) => {
                let _ = send(
                    stream,
                    &error_frame(&Status::invalid_argument(err.to_string())),
                )
                .await;
                return None;
            }
        };
        let verdict = self
            .verifier
            .verify_peer(
                &hello.token,
                Some(&hello.proof),
                self.identity.get().as_deref(),
            )
            .await;
        let claims = match verdict {
            Ok(claims) => claims,
            Err(err) => {
                tracing::debug!(%err, "framed connection: rejected credentials");
                let _ = send(stream, &error_frame(&Status::from(err))).await;
                return None;
            }
        };
        let token_left = claims.exp - p2p_services::time::now_ms() / 1000;
        let left = PEER_PROOF_TTL.min(Duration::from_secs(token_left.max(0) as u64));
        send(stream, &framing::ready()).await.ok()?;
        Some((Instant::now() + left, claims.cnf))
    }

    /// Answers one `FETCH`; false when the connection must close.
    async fn answer<S>(&self, stream: &mut S, fetch: &Fetch, caller: &str) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let opened = self.uploads.open(Ask {
            file_id: &fetch.file_id,
            ranges: &fetch.ranges,
            any_of: &fetch.any_of,
            any_count: fetch.any_count,
            caller,
        });
        let mut chunks = match opened {
            Ok(chunks) => chunks,
            Err(status) => return send(stream, &error_frame(&status)).await.is_ok(),
        };
        let stall = self.uploads.stall_timeout();
        let mut sent = 0u32;
        while let Some(item) = chunks.next().await {
            let (index, data) = match item {
                Ok(chunk) => chunk,
                Err(status) => return send(stream, &error_frame(&status)).await.is_ok(),
            };
            let write = async {
                stream
                    .write_all(&framing::chunk_prefix(index, data.len() as u32))
                    .await?;
                stream.write_all(&data).await?;
                stream.flush().await
            };
            let began = Instant::now();
            match tokio::time::timeout(stall, write).await {
                Ok(Ok(())) => {
                    sent += 1;
                    self.uploads.stats.upload_waited(began.elapsed());
                    self.uploads.stats.chunk_served_framed();
                }
                Ok(Err(_)) => return false,
                Err(_) => {
                    tracing::info!(
                        file = %chunks.file_id(),
                        "caller stopped reading a framed connection; freeing its upload slot"
                    );
                    return false;
                }
            }
        }
        send(stream, &framing::end(sent)).await.is_ok()
    }
}

/// A `p2p-holdings/1` connection as where a holdings stream's updates go:
/// each a `HOLDINGS` frame, or the `ERROR` that ends the stream.
struct FramedUpdates<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> UpdateSink for FramedUpdates<S> {
    async fn send(&mut self, update: Result<HoldingsUpdate, Status>, stall: Duration) -> bool {
        let frame = match &update {
            Ok(update) => framing::frame(Kind::Holdings, &update.encode_to_vec()),
            Err(status) => error_frame(status),
        };
        let write = async {
            self.0.write_all(&frame).await?;
            self.0.flush().await
        };
        matches!(tokio::time::timeout(stall, write).await, Ok(Ok(())))
    }

    async fn closed(&mut self) {
        // Nothing may follow `WATCH`: a byte, the end or an error alike
        // mean the watcher is done with the stream.
        let mut byte = [0u8; 1];
        let _ = self.0.read(&mut byte).await;
    }
}

/// The `ERROR` frame for `status`.
fn error_frame(status: &Status) -> Vec<u8> {
    framing::error(status.code() as i32, status.message())
}

/// Writes a small frame and flushes it, within the handshake timeout.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> std::io::Result<()> {
    let write = async {
        stream.write_all(frame).await?;
        stream.flush().await
    };
    tokio::time::timeout(p2p_services::tls::HANDSHAKE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}
