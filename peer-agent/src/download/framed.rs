//! The downloader end of the chunk framing (`p2p-chunks/1`, contract in
//! `proto/proto/p2p/peer/v1/chunks.md`, codec in
//! `p2p_services::framing`): a source's [`Pool`], holding one
//! authenticated [`Connection`], and reading one `FETCH`'s [`Answer`].
//! [`connect`] (TLS, ALPN, `HELLO`) also opens the holdings watcher's
//! `p2p-holdings/1` connections (`super::exchange`).
//!
//! A connection offers `p2p-chunks/1` then `h2` by ALPN: a source that
//! picks `h2` (an agent from before the framing, or one started with
//! `--no-chunk-framing`) does not speak it, and the pool says so once,
//! after which the worker uses FetchChunks for that source. A connection
//! sends `HELLO` once and takes new `FETCH`es until its proof is
//! [`MAX_AGE`] old.
//!
//! The calls in flight to one source share its one connection: each
//! sends its `FETCH` as soon as it is made, and reads its answer once the
//! answers to the `FETCH`es sent before it have been read (a source
//! answers them in the order they arrive). So the next call's chunks
//! follow the current call's with no round trip between them, and a
//! source's uplink is shared between its downloaders, one TCP flow each,
//! however many calls each keeps in flight. A call that fails or is
//! dropped before its answer's end leaves the stream out of step: the
//! connection is then broken, the calls waiting behind it fail with it,
//! and the next call connects again. So does an `ERROR` other than "busy"
//! or "not held", after which the source may close the connection.
//!
//! Each chunk frame's length is checked against the chunk it must be
//! before its bytes are read, and the bytes land in the connection's own
//! buffer, whose memory is reused once the chunk is written; so a
//! connection holds at most one chunk however hostile its source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use p2p_services::framing::{self, Fetch, Hello, Kind};
use p2p_services::tls::ClientTls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio_rustls::client::TlsStream;
use tonic::{Code, Status};

/// A connection takes no new `FETCH` once its `HELLO` is this old: sources
/// honour a proof for [`p2p_services::auth::PEER_PROOF_TTL`] after it, and
/// ours may already be up to a minute old when sent.
pub const MAX_AGE: Duration = Duration::from_secs(50);
/// The turn of a broken connection: no answer on it is read any more.
const BROKEN: u64 = u64::MAX;

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

/// What a framed connection runs on.
pub type Stream = TlsStream<TcpStream>;

/// One authenticated connection to a source, shared by the calls in
/// flight to it (generic over the stream only for the tests).
pub struct Connection<S = Stream> {
    hello_at: Instant,
    writer: Mutex<Writer<S>>,
    reader: Arc<Mutex<Reader<S>>>,
    /// The ticket whose answer is read next, or [`BROKEN`].
    turn: watch::Sender<u64>,
}

struct Writer<S> {
    stream: WriteHalf<S>,
    /// `FETCH`es sent whole so far: the next one's ticket.
    sent: u64,
}

struct Reader<S> {
    stream: ReadHalf<S>,
    buf: BytesMut,
}

/// A source's framed connection, and whether it speaks the framing.
pub struct Pool {
    address: String,
    tls: ClientTls,
    offered: AtomicBool,
    current: Mutex<Option<Arc<Connection>>>,
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
            current: Mutex::new(None),
        }
    }

    /// Whether the source may speak the framing (until it showed it does
    /// not).
    pub fn offered(&self) -> bool {
        self.offered.load(Ordering::Relaxed)
    }

    /// The source's connection, or a new one that said `HELLO` with `token`
    /// and `proof` when there is none that takes new `FETCH`es; `None`
    /// when the source does not speak the framing. A call made while the
    /// connection is being opened waits for it (within the handshake
    /// timeouts) rather than open another.
    pub async fn checkout(
        &self,
        token: &str,
        proof: &str,
    ) -> Result<Option<Arc<Connection>>, Fault> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| c.takes_fetches()) {
            return Ok(Some(connection.clone()));
        }
        *current = None;
        if !self.offered() {
            return Ok(None);
        }
        let hello_at = Instant::now();
        let Some(stream) = connect(&self.tls, &self.address, framing::ALPN, token, proof).await?
        else {
            self.offered.store(false, Ordering::Relaxed);
            return Ok(None);
        };
        let connection = Arc::new(Connection::new(stream, hello_at));
        *current = Some(connection.clone());
        Ok(Some(connection))
    }
}

/// A TLS connection to the source at `address` that offered `alpn` (then
/// `h2`) and on which the source answered `HELLO` (`token` and `proof`)
/// with `READY`, within the handshake timeouts: how both framings open.
/// `None` when the source chose `h2`, so does not speak `alpn`.
pub async fn connect(
    tls: &ClientTls,
    address: &str,
    alpn: &[u8],
    token: &str,
    proof: &str,
) -> Result<Option<Stream>, Fault> {
    let mut stream = tls
        .connect_raw(address, &[alpn, b"h2"])
        .await
        .map_err(|e| Fault::Io(format!("cannot connect: {e}")))?;
    if stream.get_ref().1.alpn_protocol() != Some(alpn) {
        let _ = stream.shutdown().await;
        return Ok(None);
    }
    let hello = Hello {
        token: token.to_string(),
        proof: proof.to_string(),
    };
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
        Ok(Ok(Some(_))) => Ok(Some(stream)),
    }
}

impl<S> Connection<S> {
    /// Whether a new `FETCH` may go on this connection.
    fn takes_fetches(&self) -> bool {
        *self.turn.borrow() != BROKEN && self.hello_at.elapsed() < MAX_AGE
    }

    fn break_off(&self) {
        self.turn.send_replace(BROKEN);
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Connection<S> {
    fn new(stream: S, hello_at: Instant) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self {
            hello_at,
            writer: Mutex::new(Writer {
                stream: write,
                sent: 0,
            }),
            reader: Arc::new(Mutex::new(Reader {
                stream: read,
                buf: BytesMut::new(),
            })),
            turn: watch::Sender::new(0),
        }
    }

    /// Sends one `FETCH`, within `stall`; its answer is read through the
    /// [`Answer`] returned.
    pub async fn send(
        self: &Arc<Self>,
        fetch: &Fetch,
        stall: Duration,
    ) -> Result<Answer<S>, Fault> {
        let mut writer = self.writer.lock().await;
        if *self.turn.borrow() == BROKEN {
            return Err(broken());
        }
        let ticket = writer.sent;
        let write = async {
            writer.stream.write_all(&fetch.encode()).await?;
            writer.stream.flush().await
        };
        let result = match tokio::time::timeout(stall, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Fault::Io(e.to_string())),
            Err(_) => Err(Fault::Stalled),
        };
        if let Err(fault) = result {
            // Part of a FETCH may be on the wire: the stream is out of step.
            self.break_off();
            return Err(fault);
        }
        writer.sent = ticket + 1;
        Ok(Answer {
            connection: self.clone(),
            ticket,
            reader: None,
            began: None,
            ended: false,
        })
    }
}

/// The answer to one `FETCH`, read in its turn.
pub struct Answer<S = Stream> {
    connection: Arc<Connection<S>>,
    ticket: u64,
    reader: Option<OwnedMutexGuard<Reader<S>>>,
    /// When its turn came: how long the source then takes to send it is
    /// what it delivers at, without the answers before it.
    began: Option<Instant>,
    ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> Answer<S> {
    /// The next chunk of this answer, `None` at its `END`. `expected(index)`
    /// is the length chunk `index` must have here, or `None` when it was
    /// not asked for; the whole frame must arrive within `stall`. The first
    /// call first waits for the answers before this one to be read: a wait
    /// each of those bounds with its own stall timeouts, since a call that
    /// fails or is dropped mid-answer breaks the connection and this one
    /// then fails too.
    pub async fn next(
        &mut self,
        expected: impl Fn(u32) -> Option<u32>,
        stall: Duration,
    ) -> Result<Option<(u32, Bytes)>, Fault> {
        if self.reader.is_none() {
            let ticket = self.ticket;
            let mut turn = self.connection.turn.subscribe();
            let now = *turn
                .wait_for(|&t| t == ticket || t == BROKEN)
                .await
                .map_err(|_| broken())?;
            if now == BROKEN {
                return Err(broken());
            }
            self.reader = Some(self.connection.reader.clone().lock_owned().await);
            self.began = Some(Instant::now());
        }
        let Some(reader) = self.reader.as_mut() else {
            return Err(broken());
        };
        let read = match tokio::time::timeout(stall, reader.read_frame(expected)).await {
            Ok(result) => result,
            Err(_) => Err(Fault::Stalled),
        };
        match &read {
            Ok(None) => self.end(),
            // A busy source, or a chunk it no longer holds: the answer
            // ends here and the connection stays in step. After any other
            // `ERROR` the source may close it (it does for an expired
            // proof): the next call connects again.
            Err(Fault::Status(status))
                if matches!(status.code(), Code::ResourceExhausted | Code::NotFound) =>
            {
                self.end()
            }
            _ => {}
        }
        read
    }

    /// When this answer's turn came (its first read), if it has.
    pub fn began(&self) -> Option<Instant> {
        self.began
    }

    /// The answer was read to its end: the next one's turn.
    fn end(&mut self) {
        self.ended = true;
        self.reader = None;
        self.connection
            .turn
            .send_if_modified(|t| match *t == self.ticket {
                true => {
                    *t += 1;
                    true
                }
                false => false,
            });
    }

    /// Gives the connection up: its stream is out of step after this
    /// answer (a source that sent a short answer).
    pub fn abandon(mut self) {
        self.ended = false;
    }
}

impl<S> Drop for Answer<S> {
    fn drop(&mut self) {
        if !self.ended {
            self.connection.break_off();
        }
    }
}

impl<S: AsyncRead + Send> Reader<S> {
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

fn broken() -> Fault {
    Fault::Io("an earlier call on this connection failed".into())
}

/// The status an `ERROR` body carries.
fn error_status(body: &[u8]) -> Fault {
    framing::decode_status(body).map_or_else(|err| Fault::Protocol(err.to_string()), Fault::Status)
}

fn fault(err: framing::FrameError) -> Fault {
    match err {
        framing::FrameError::Io(e) => Fault::Io(e.to_string()),
        other => Fault::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;

    use super::*;

    const LEN: usize = 8;
    const STALL: Duration = Duration::from_secs(5);

    fn connection() -> (Arc<Connection<DuplexStream>>, DuplexStream) {
        let (ours, source) = tokio::io::duplex(1 << 16);
        (Arc::new(Connection::new(ours, Instant::now())), source)
    }

    fn fetch(index: u32) -> Fetch {
        Fetch {
            file_id: "f".into(),
            ranges: vec![(index, 1)],
            any_of: Vec::new(),
            any_count: 0,
        }
    }

    /// Every chunk is `LEN` bytes of its index.
    fn length(index: u32) -> Option<u32> {
        (index < 10).then_some(LEN as u32)
    }

    async fn send_chunk(source: &mut DuplexStream, index: u32) {
        source
            .write_all(&framing::chunk_prefix(index, LEN as u32))
            .await
            .unwrap();
        source.write_all(&[index as u8; LEN]).await.unwrap();
    }

    async fn fetched(source: &mut DuplexStream) -> Fetch {
        let (_, body) = framing::read_small(source, &[Kind::Fetch])
            .await
            .unwrap()
            .unwrap();
        Fetch::decode(&body).unwrap()
    }

    #[tokio::test]
    async fn answers_are_read_in_the_order_their_fetches_went_out() {
        let (connection, mut source) = connection();
        let mut first = connection.send(&fetch(0), STALL).await.unwrap();
        let mut second = connection.send(&fetch(1), STALL).await.unwrap();
        // Both FETCHes are on the wire before any answer.
        assert_eq!(fetched(&mut source).await.ranges, vec![(0, 1)]);
        assert_eq!(fetched(&mut source).await.ranges, vec![(1, 1)]);

        // The second call reads first, but must wait for its turn.
        let waiting = tokio::spawn(async move {
            let chunk = second.next(length, STALL).await.unwrap().unwrap();
            let end = second.next(length, STALL).await.unwrap();
            (chunk, end)
        });
        send_chunk(&mut source, 0).await;
        source.write_all(&framing::end(1)).await.unwrap();
        send_chunk(&mut source, 1).await;
        source.write_all(&framing::end(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "read the first answer out of turn");

        let (index, data) = first.next(length, STALL).await.unwrap().unwrap();
        assert_eq!((index, &data[..]), (0, &[0u8; LEN][..]));
        assert!(first.next(length, STALL).await.unwrap().is_none());
        let ((index, data), end) = tokio::time::timeout(STALL, waiting)
            .await
            .expect("the second answer is read once the first ended")
            .unwrap();
        assert_eq!((index, &data[..]), (1, &[1u8; LEN][..]));
        assert!(end.is_none());
        assert!(connection.takes_fetches());
    }

    #[tokio::test]
    async fn a_call_dropped_inside_its_answer_breaks_the_connection() {
        let (connection, mut source) = connection();
        let mut first = connection.send(&fetch(0), STALL).await.unwrap();
        let mut second = connection.send(&fetch(1), STALL).await.unwrap();
        send_chunk(&mut source, 0).await;
        assert!(first.next(length, STALL).await.unwrap().is_some());
        // Its END is never read: the stream is out of step from here.
        drop(first);
        assert!(matches!(
            second.next(length, STALL).await,
            Err(Fault::Io(_))
        ));
        assert!(!connection.takes_fetches());
        assert!(matches!(
            connection.send(&fetch(2), STALL).await,
            Err(Fault::Io(_))
        ));
    }

    #[tokio::test]
    async fn an_error_answer_leaves_the_connection_in_step() {
        let (connection, mut source) = connection();
        let mut first = connection.send(&fetch(0), STALL).await.unwrap();
        let mut second = connection.send(&fetch(1), STALL).await.unwrap();
        source
            .write_all(&framing::error(Code::ResourceExhausted as i32, "busy"))
            .await
            .unwrap();
        send_chunk(&mut source, 1).await;
        source.write_all(&framing::end(1)).await.unwrap();

        match first.next(length, STALL).await {
            Err(Fault::Status(status)) => assert_eq!(status.code(), Code::ResourceExhausted),
            other => panic!("{other:?}"),
        }
        drop(first);
        let (index, _) = second.next(length, STALL).await.unwrap().unwrap();
        assert_eq!(index, 1);
        assert!(second.next(length, STALL).await.unwrap().is_none());
        assert!(connection.takes_fetches());
    }

    #[tokio::test]
    async fn an_error_the_source_may_close_after_ends_the_connection() {
        let (connection, mut source) = connection();
        let mut first = connection.send(&fetch(0), STALL).await.unwrap();
        source
            .write_all(&framing::error(
                Code::Unauthenticated as i32,
                "proof expired",
            ))
            .await
            .unwrap();
        assert!(matches!(
            first.next(length, STALL).await,
            Err(Fault::Status(_))
        ));
        drop(first);
        assert!(!connection.takes_fetches());
    }

    #[tokio::test]
    async fn a_chunk_for_another_call_breaks_the_framing() {
        let (connection, mut source) = connection();
        let mut first = connection.send(&fetch(0), STALL).await.unwrap();
        // The source answers the first FETCH with the chunk of a later one.
        send_chunk(&mut source, 1).await;
        let wanted_zero = |index: u32| (index == 0).then_some(LEN as u32);
        assert!(matches!(
            first.next(wanted_zero, STALL).await,
            Err(Fault::Protocol(_))
        ));
        drop(first);
        assert!(!connection.takes_fetches());
    }
}
