//! The downloader end of the holdings stream (its contract in
//! [`crate::exchange`]): a [`Watcher`] reads one source's stream for one
//! download and turns each update into [`WatchEvent`]s for
//! the coordinator: what the source holds, what it just verified, and the
//! peers it knows (not checked yet: the coordinator runs
//! [`check_hint`](crate::exchange::check_hint) on each). It drops a source
//! silent for [`SILENT_DROP`] and ends with [`WatchEnd::Misbehaved`] (the
//! coordinator reports and bans it) on a malformed update, an index past
//! the end, more than [`MAX_UPDATES_PER_SEC`] sustained, or too many peers
//! in one update.
//!
//! Over TLS a watcher first offers `p2p-holdings/1` by ALPN: the same
//! request and updates as `WATCH` and `HOLDINGS` frames on a connection of
//! their own (`proto/proto/p2p/peer/v1/chunks.md`), without HTTP/2's and
//! tonic's work per message. A source that picks `h2` instead (an agent
//! from before it) is watched with `PeerService/WatchHoldings` from then
//! on. Either way the updates meet the same checks.

use std::sync::Arc;
use std::time::Duration;

use p2p_proto::peer::v1::peer_service_client::PeerServiceClient;
use p2p_proto::peer::v1::{HoldingsUpdate, PeerHint, WatchHoldingsRequest};
use p2p_services::client::with_peer_credentials;
use p2p_services::framing::{self, FrameError, Kind};
use p2p_services::manifest::Bitfield;
use p2p_services::tls::ClientTls;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::framed::{self, Fault};
use crate::exchange::{
    MAX_HAVE_PER_UPDATE, MAX_PEERS_PER_UPDATE, MAX_UPDATE_BYTES, MAX_UPDATES_PER_SEC, SILENT_DROP,
    UPDATE_BURST,
};
use crate::picker::SourceKey;

/// The client for a source's holdings stream: small messages only.
pub fn watch_client(channel: Channel, chunk_count: u32) -> PeerServiceClient<Channel> {
    let bitfield_bytes = (chunk_count as usize).div_ceil(8);
    PeerServiceClient::new(channel).max_decoding_message_size(bitfield_bytes + MAX_UPDATE_BYTES)
}

/// What a watcher learnt, for the coordinator.
#[derive(Debug)]
pub enum WatchEvent {
    /// The source holds exactly these chunks.
    Holds(Bitfield),
    /// The source verified these chunks.
    Have(Vec<u32>),
    /// Peers the source knows for the file (not checked yet).
    Peers(Vec<PeerHint>),
    /// The stream ended.
    Ended(WatchEnd),
}

/// How a holdings stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The source does not serve WatchHoldings (an older agent): the index
    /// stays its only news.
    Unsupported,
    /// The source ended it or could not be reached; not its fault.
    Closed(String),
    /// Nothing for [`SILENT_DROP`].
    Silent,
    /// The source broke the contract: report and ban it.
    Misbehaved(String),
}

/// Watches one source's holdings for one download.
pub struct Watcher {
    /// The source within the download.
    pub key: SourceKey,
    /// Who answers at the source's address (the proof names it).
    pub source_peer_id: String,
    /// The file.
    pub file_id: String,
    /// Its chunk count.
    pub chunk_count: u32,
    /// Our own hint, so the source can tell others about us.
    pub caller: Option<PeerHint>,
    /// For the peer token and a proof for `source_peer_id`.
    pub session: Arc<crate::session::Session>,
    /// The source's client (see [`watch_client`]).
    pub client: PeerServiceClient<Channel>,
    /// The source's address and how to reach it over TLS, when this agent
    /// uses the framings: the stream is then first tried as
    /// `p2p-holdings/1`.
    pub framed: Option<(String, ClientTls)>,
    /// Where events go.
    pub events: mpsc::Sender<(SourceKey, WatchEvent)>,
}

impl Watcher {
    /// Reads the stream until it ends; every event, and the end, goes to
    /// the coordinator.
    pub async fn run(mut self) {
        let key = self.key;
        let events = self.events.clone();
        let mut attempt = 1;
        let end = loop {
            match self.watch().await {
                Ok(end) => break end,
                Err(status) if status.code() == Code::Unavailable && attempt < OPEN_ATTEMPTS => {
                    tracing::debug!(peer = %self.source_peer_id, attempt, %status, "cannot open a holdings stream yet; trying again");
                    tokio::time::sleep(reopen_after(attempt)).await;
                    attempt += 1;
                }
                Err(status) => break ended(&status),
            }
        };
        let _ = events.send((key, WatchEvent::Ended(end))).await;
    }

    /// The stream until it ends, or `Err` when the call did not open.
    async fn watch(&mut self) -> Result<WatchEnd, Status> {
        let request = WatchHoldingsRequest {
            file_id: self.file_id.clone(),
            caller: self.caller.clone(),
        };
        let (token, proof) = match self.session.peer_credentials(&self.source_peer_id).await {
            Ok(credentials) => credentials,
            Err(err) => return Ok(WatchEnd::Closed(err.to_string())),
        };
        let (token, proof) = (&token, &proof);
        if let Some((address, tls)) = &self.framed {
            match open_framed(address, tls, token, proof, &request).await? {
                Some(stream) => return Ok(self.follow(Updates::Framed(Box::new(stream))).await),
                None => {
                    tracing::debug!(peer = %self.source_peer_id, "source does not speak p2p-holdings/1; watching over gRPC");
                    self.framed = None;
                }
            }
        }
        let mut client = self.client.clone();
        let response = match tokio::time::timeout(
            SILENT_DROP,
            client.watch_holdings(with_peer_credentials(request, token, proof)),
        )
        .await
        {
            Err(_) => return Ok(WatchEnd::Silent),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(response)) => response,
        };
        Ok(self
            .follow(Updates::Grpc(Box::new(response.into_inner())))
            .await)
    }

    async fn follow(&self, mut stream: Updates) -> WatchEnd {
        let mut budget = Budget::new();
        let mut first = true;
        let max_bytes = (self.chunk_count as usize).div_ceil(8) + MAX_UPDATE_BYTES;
        loop {
            let update = match tokio::time::timeout(SILENT_DROP, stream.next(max_bytes)).await {
                Err(_) => return WatchEnd::Silent,
                Ok(Err(end)) => return end,
                Ok(Ok(None)) => return WatchEnd::Closed("the source ended the stream".into()),
                Ok(Ok(Some(update))) => update,
            };
            if !budget.take() {
                return WatchEnd::Misbehaved(format!(
                    "flooded holdings updates (more than {MAX_UPDATES_PER_SEC} per second)"
                ));
            }
            match check_update(&update, self.chunk_count, first) {
                Err(detail) => return WatchEnd::Misbehaved(detail),
                Ok(events) => {
                    for event in events {
                        if self.events.send((self.key, event)).await.is_err() {
                            return WatchEnd::Closed("the download ended".into());
                        }
                    }
                }
            }
            first = false;
        }
    }
}

/// A holdings stream as it arrives: gRPC messages or `HOLDINGS` frames
/// (read from a TLS stream; from any stream in the tests).
enum Updates {
    Grpc(Box<tonic::Streaming<HoldingsUpdate>>),
    Framed(Box<dyn AsyncRead + Unpin + Send>),
}

impl Updates {
    /// The next update, `None` when the source ended the stream cleanly;
    /// a framed update is at most `max_bytes`, as the gRPC client's
    /// decoding limit has it.
    async fn next(&mut self, max_bytes: usize) -> Result<Option<HoldingsUpdate>, WatchEnd> {
        let stream = match self {
            Self::Grpc(stream) => return stream.message().await.map_err(|s| ended(&s)),
            Self::Framed(stream) => stream,
        };
        match framing::read_small(stream, &[Kind::Holdings, Kind::Error]).await {
            Ok(None) => Ok(None),
            Ok(Some((Kind::Holdings, body))) if body.len() > max_bytes => {
                Err(WatchEnd::Misbehaved(format!(
                    "sent a holdings update of {} bytes; at most {max_bytes}",
                    body.len()
                )))
            }
            Ok(Some((Kind::Holdings, body))) => {
                HoldingsUpdate::decode(&body[..]).map(Some).map_err(|e| {
                    WatchEnd::Misbehaved(format!("sent a malformed holdings update: {e}"))
                })
            }
            Ok(Some((_, body))) => Err(match framing::decode_status(&body) {
                Ok(status) => ended(&status),
                Err(err) => WatchEnd::Misbehaved(err.to_string()),
            }),
            Err(FrameError::Io(err)) => Err(WatchEnd::Closed(format!(
                "the holdings connection failed: {err}"
            ))),
            Err(err) => Err(WatchEnd::Misbehaved(format!(
                "broke the holdings framing: {err}"
            ))),
        }
    }
}

/// Opens a `p2p-holdings/1` stream to the source at `address`: TLS and
/// `HELLO` as for the chunk framing ([`framed::connect`]), then `WATCH`.
/// `None` when the source chose `h2` (it does not speak it); `Err` as a
/// gRPC call that did not open would fail (`UNAVAILABLE` when the source
/// cannot be reached, so the caller tries again).
async fn open_framed(
    address: &str,
    tls: &ClientTls,
    token: &str,
    proof: &str,
    request: &WatchHoldingsRequest,
) -> Result<Option<framed::Stream>, Status> {
    let opened = framed::connect(tls, address, framing::HOLDINGS_ALPN, token, proof).await;
    let mut stream = match opened {
        Ok(Some(stream)) => stream,
        Ok(None) => return Ok(None),
        Err(Fault::Status(status)) => return Err(status),
        Err(Fault::Io(detail)) => {
            return Err(Status::unavailable(format!(
                "the holdings connection to {address} failed: {detail}"
            )));
        }
        Err(Fault::Stalled) => {
            return Err(Status::unavailable(format!(
                "{address} did not answer HELLO within {:?}",
                p2p_services::tls::HANDSHAKE_TIMEOUT
            )));
        }
        Err(Fault::Protocol(detail)) => {
            return Err(Status::internal(format!(
                "{address} broke the holdings framing: {detail}"
            )));
        }
    };
    let watch = framing::frame(Kind::Watch, &request.encode_to_vec());
    let send = async {
        stream.write_all(&watch).await?;
        stream.flush().await
    };
    match tokio::time::timeout(p2p_services::tls::HANDSHAKE_TIMEOUT, send).await {
        Ok(Ok(())) => Ok(Some(stream)),
        Ok(Err(err)) => Err(Status::unavailable(format!(
            "the holdings connection to {address} failed: {err}"
        ))),
        Err(_) => Err(Status::unavailable(format!(
            "{address} did not take WATCH within {:?}",
            p2p_services::tls::HANDSHAKE_TIMEOUT
        ))),
    }
}

/// How many times a holdings stream (and a worker's first call) is tried
/// before a source that never answered is given up: on a saturated link a
/// SYN or SYN-ACK can be lost three times, and the connect times out after
/// 5 s.
pub const OPEN_ATTEMPTS: u32 = 3;

/// The pause before attempt `attempt + 1` to reach a source that has not
/// answered yet: 0.5 s, then 1 s, each ±25 %.
pub fn reopen_after(attempt: u32) -> Duration {
    super::jittered(Duration::from_millis(500) * 2u32.pow(attempt.saturating_sub(1).min(4)))
}

fn ended(status: &Status) -> WatchEnd {
    match status.code() {
        Code::Unimplemented => WatchEnd::Unsupported,
        _ => WatchEnd::Closed(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Checks one update against the contract and turns it into events (pure,
/// for the unit tests).
pub fn check_update(
    update: &HoldingsUpdate,
    chunk_count: u32,
    first: bool,
) -> Result<Vec<WatchEvent>, String> {
    let mut events = Vec::new();
    if first {
        let holds = if update.complete {
            Bitfield::full(chunk_count)
        } else {
            Bitfield::from_bytes(&update.bitfield, chunk_count)
                .map_err(|e| format!("sent a bad bitfield: {e}"))?
        };
        events.push(WatchEvent::Holds(holds));
    } else if !update.bitfield.is_empty() {
        return Err("sent a second bitfield".into());
    } else if update.complete {
        events.push(WatchEvent::Holds(Bitfield::full(chunk_count)));
    }
    if update.have.len() > MAX_HAVE_PER_UPDATE {
        return Err(format!(
            "listed {} chunks in one update; at most {MAX_HAVE_PER_UPDATE}",
            update.have.len()
        ));
    }
    if let Some(bad) = update.have.iter().find(|&&i| i >= chunk_count) {
        return Err(format!(
            "claimed chunk {bad} of a file of {chunk_count} chunks"
        ));
    }
    if !update.have.is_empty() && !update.complete {
        events.push(WatchEvent::Have(update.have.clone()));
    }
    if update.peers.len() > MAX_PEERS_PER_UPDATE {
        return Err(format!(
            "listed {} peers in one update; at most {MAX_PEERS_PER_UPDATE}",
            update.peers.len()
        ));
    }
    if !update.peers.is_empty() {
        events.push(WatchEvent::Peers(update.peers.clone()));
    }
    Ok(events)
}

/// A token bucket of updates: [`MAX_UPDATES_PER_SEC`], bursts of
/// [`UPDATE_BURST`].
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new() -> Self {
        Self {
            tokens: f64::from(UPDATE_BURST),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(MAX_UPDATES_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(UPDATE_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::testing::hint;

    #[test]
    fn updates_past_the_end_or_too_big_are_misbehaviour() {
        let mut update = HoldingsUpdate {
            bitfield: Vec::new(),
            have: vec![3, 10],
            complete: false,
            peers: Vec::new(),
        };
        assert!(check_update(&update, 10, false).is_err());
        update.have = (0..2000).map(|i| i % 10).collect();
        assert!(check_update(&update, 10, false).is_err());
        update.have = vec![1, 2];
        update.peers = (0..17)
            .map(|i| hint(&format!("p{i}"), "10.0.0.1:1"))
            .collect();
        assert!(check_update(&update, 10, false).is_err());
        update.peers.truncate(2);
        let events = check_update(&update, 10, false).unwrap();
        assert_eq!(events.len(), 2);
        update.bitfield = vec![0xff, 0xc0];
        assert!(check_update(&update, 10, false).is_err());
        assert!(check_update(&update, 10, true).is_ok());
        update.bitfield = vec![0xff];
        assert!(check_update(&update, 10, true).is_err());
    }

    /// What `Updates::next` makes of `bytes` sent as a framed stream.
    async fn framed_next(bytes: Vec<u8>) -> Result<Option<HoldingsUpdate>, WatchEnd> {
        let (mut source, ours) = tokio::io::duplex(1 << 16);
        source.write_all(&bytes).await.unwrap();
        drop(source);
        Updates::Framed(Box::new(ours)).next(64).await
    }

    #[tokio::test]
    async fn framed_updates_are_read_and_broken_frames_are_misbehaviour() {
        let update = HoldingsUpdate {
            have: vec![1, 2],
            ..Default::default()
        };
        let frame = framing::frame(Kind::Holdings, &update.encode_to_vec());
        assert_eq!(framed_next(frame).await.unwrap(), Some(update));
        assert_eq!(framed_next(Vec::new()).await.unwrap(), None);

        let too_big = framing::frame(Kind::Holdings, &[0; 65]);
        let not_protobuf = framing::frame(Kind::Holdings, &[0xff; 8]);
        let fetch = framing::Fetch::default().encode();
        let unknown = vec![0, 0, 0, 0, 0x7f];
        for (what, bytes) in [
            ("an update over the limit", too_big),
            ("a body that is no HoldingsUpdate", not_protobuf),
            ("a frame of another kind", fetch),
            ("a frame of no kind", unknown),
        ] {
            assert!(
                matches!(framed_next(bytes).await, Err(WatchEnd::Misbehaved(_))),
                "{what} was taken"
            );
        }

        let not_held = framing::error(Code::NotFound as i32, "not held");
        assert!(matches!(
            framed_next(not_held).await,
            Err(WatchEnd::Closed(message)) if message.contains("not held")
        ));
        let cut = framing::frame(Kind::Holdings, &[0; 10])[..8].to_vec();
        assert!(matches!(framed_next(cut).await, Err(WatchEnd::Closed(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_runs_out_of_budget() {
        let mut budget = Budget::new();
        let taken = (0..200).filter(|_| budget.take()).count();
        assert_eq!(taken, UPDATE_BURST as usize);
        tokio::time::advance(Duration::from_secs(1)).await;
        let taken = (0..200).filter(|_| budget.take()).count();
        assert_eq!(taken, MAX_UPDATES_PER_SEC as usize);
    }
}
