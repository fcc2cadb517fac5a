//! The downloader end of the chunk framing (`p2p-chunks/1`, contract in
//! `proto/proto/p2p/peer/v1/chunks.md`, codec in
//! `p2p_services::framing`): a source's [`Pool`] of authenticated
//! connections, and reading one `FETCH`'s answer from a [`Connection`].
//!
//! A connection offers `p2p-chunks/1` then `h2` by ALPN: a source that
//! picks `h2` (an agent from before the framing, or one started with
//! `--no-chunk-framing`) does not speak it, and the pool says so once,
//! after which the worker uses FetchChunks for that source. A connection
//! sends `HELLO` once and is reused for later `FETCH`es until its proof is
//! [`MAX_AGE`] old. Each chunk frame's length is checked against the
//! chunk it must be before its bytes are read, and the bytes land in the
//! connection's own buffer, whose memory is reused once the chunk is
//! written; so a connection holds at most one chunk however hostile its
//! source.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use p2p_services::framing::{self, Fetch, Hello, Kind};
use p2p_services::tls::ClientTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::{Code, Status};

/// A connection is not reused once its `HELLO` is this old: sources honour
/// a proof for [`p2p_services::auth::PEER_PROOF_TTL`] after it, and ours
/// may already be up to a minute old when sent.
pub const MAX_AGE: Duration = Duration::from_secs(50);
/// Most idle connections a pool keeps (one per call in flight).
const MAX_IDLE: usize = 2;

/// Why a framed fetch failed, for the worker to classify.
#[derive(Debug)]
pub enum Fault {
    /// The source answered `ERROR`: what FetchChunks would have said.
    Status(Status),
    /// The source broke the framing: a frame too long, for a chunk not
    /// asked for, of the wrong length, or of a kind out of place.
    Protocol(String),
    /// The connection failed or ended early.
    Io(String),
    /// No whole frame within the stall timeout.
    Stalled,
}

/// One authenticated connection to a source.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    hello_at: Instant,
    buf: BytesMut,
}

/// A source's framed connections, and whether it speaks the framing.
pub struct Pool {
    address: String,
    tls: ClientTls,
    offered: AtomicBool,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("address", &self.address)
            .field("offered", &self.offered.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Connections to the source at `address`, verified with `tls`.
    pub fn new(address: String, tls: ClientTls) -> Self {
        Self {
            address,
            tls,
            offered: AtomicBool::new(true),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether the source may speak the framing (until it showed it does
    /// not).
    pub fn offered(&self) -> bool {
        self.offered.load(Ordering::Relaxed)
    }

    /// An idle connection, or a new one that said `HELLO` with `token` and
    /// `proof`; `None` when the source does not speak the framing.
    pub async fn checkout(&self, token: &str, proof: &str) -> Result<Option<Connection>, Fault> {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| c.hello_at.elapsed() < MAX_AGE);
            idle.pop()
        };
        if let Some(connection) = reused {
            return Ok(Some(connection));
        }
        if !self.offered() {
            return Ok(None);
        }
        let mut stream = self
            .tls
            .connect_raw(&self.address, &[framing::ALPN, b"h2"])
            .await
            .map_err(|e| Fault::Io(format!("cannot connect: {e}")))?;
        if stream.get_ref().1.alpn_protocol() != Some(framing::ALPN) {
            self.offered.store(false, Ordering::Relaxed);
            let _ = stream.shutdown().await;
            return Ok(None);
        }
        let hello = Hello {
            token: token.to_string(),
            proof: proof.to_string(),
        };
        let hello_at = Instant::now();
        let answer = async {
            stream.write_all(&hello.encode()).await?;
            stream.flush().await?;
            framing::read_small(&mut stream, &[Kind::Ready, Kind::Error]).await
        };
        match tokio::time::timeout(p2p_services::tls::HANDSHAKE_TIMEOUT, answer).await {
            Err(_) => Err(Fault::Stalled),
            Ok(Err(err)) => Err(fault(err)),
            Ok(Ok(None)) => Err(Fault::Io("the source closed the connection".into())),
            Ok(Ok(Some((Kind::Error, body)))) => Err(error_status(&body)),
            Ok(Ok(Some(_))) => Ok(Some(Connection {
                stream,
                hello_at,
                buf: BytesMut::new(),
            })),
        }
    }

    /// Gives back a connection whose last answer was read to its end.
    pub fn put_back(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE && connection.hello_at.elapsed() < MAX_AGE {
            idle.push(connection);
        }
    }
}

impl Connection {
    /// Sends one `FETCH`, within `stall`.
    pub async fn send(&mut self, fetch: &Fetch, stall: Duration) -> Result<(), Fault> {
        let write = async {
            self.stream.write_all(&fetch.encode()).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(stall, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Fault::Io(e.to_string())),
            Err(_) => Err(Fault::Stalled),
        }
    }

    /// The next chunk of the current answer, `None` at its `END`.
    /// `expected(index)` is the length chunk `index` must have here, or
    /// `None` when it was not asked for; the whole frame must arrive
    /// within `stall`.
    pub async fn next(
        &mut self,
        expected: impl Fn(u32) -> Option<u32>,
        stall: Duration,
    ) -> Result<Option<(u32, Bytes)>, Fault> {
        match tokio::time::timeout(stall, self.read_frame(expected)).await {
            Ok(result) => result,
            Err(_) => Err(Fault::Stalled),
        }
    }

    async fn read_frame(
        &mut self,
        expected: impl Fn(u32) -> Option<u32>,
    ) -> Result<Option<(u32, Bytes)>, Fault> {
        let header = framing::read_header(&mut self.stream)
            .await
            .map_err(fault)?
            .ok_or_else(|| Fault::Io("the source closed the connection".into()))?;
        match header.kind {
            Kind::Chunk => {}
            Kind::End | Kind::Error => {
                let mut body = vec![0; header.len as usize];
                self.stream
                    .read_exact(&mut body)
                    .await
                    .map_err(|e| Fault::Io(e.to_string()))?;
                return match header.kind {
                    Kind::End => Ok(None),
                    _ => Err(error_status(&body)),
                };
            }
            other => return Err(Fault::Protocol(format!("unexpected {other:?} frame"))),
        }
        let mut index = [0u8; framing::CHUNK_PREFIX_BYTES];
        if (header.len as usize) < index.len() {
            return Err(Fault::Protocol("a chunk frame with no index".into()));
        }
        self.stream
            .read_exact(&mut index)
            .await
            .map_err(|e| Fault::Io(e.to_string()))?;
        let index = u32::from_be_bytes(index);
        let len = header.len - framing::CHUNK_PREFIX_BYTES as u32;
        match expected(index) {
            None => {
                return Err(Fault::Protocol(format!(
                    "sent chunk {index}, which was not asked for"
                )));
            }
            Some(want) if want != len => {
                return Err(Fault::Protocol(format!(
                    "sent chunk {index} as {len} bytes; it has {want}"
                )));
            }
            Some(_) => {}
        }
        // Reclaims the previous chunk's memory once its write let go of it.
        self.buf.clear();
        self.buf.reserve(len as usize);
        while self.buf.len() < len as usize {
            let left = len as usize - self.buf.len();
            let n = self
                .stream
                .read_buf(&mut (&mut self.buf).limit(left))
                .await
                .map_err(|e| Fault::Io(e.to_string()))?;
            if n == 0 {
                // A clean TLS close (close_notify) inside a frame is the
                // source's own doing, not a failing network.
                return Err(Fault::Protocol(format!(
                    "closed the connection inside chunk {index}"
                )));
            }
        }
        Ok(Some((index, self.buf.split().freeze())))
    }
}

/// The status an `ERROR` body carries.
fn error_status(body: &[u8]) -> Fault {
    match framing::decode_error(body) {
        Ok((code, message)) => Fault::Status(Status::new(Code::from_i32(code), message)),
        Err(err) => Fault::Protocol(err.to_string()),
    }
}

fn fault(err: framing::FrameError) -> Fault {
    match err {
        framing::FrameError::Io(e) => Fault::Io(e.to_string()),
        other => Fault::Protocol(other.to_string()),
    }
}
