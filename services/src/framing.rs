//! The chunk framing `p2p-chunks/1`: chunks as length-prefixed frames on
//! the PeerService's own TLS listener, chosen by ALPN beside `h2`, so bulk
//! bytes skip HTTP/2 and protobuf. The contract (every frame, its limits,
//! every error and what the receiver does) is
//! `proto/proto/p2p/peer/v1/chunks.md`; this module is its one encoder and
//! decoder, used by the agent's server and client and by the hostile test
//! peer. FetchChunks stays the reference: a `FETCH` means what a
//! `FetchChunksRequest` means, and an `ERROR` carries the gRPC status code
//! FetchChunks would have answered.
//!
//! Every frame is a 5-byte header, `u32` body length and `u8` kind (big
//! endian), then the body. A reader checks the length against the kind's
//! limit before it reads the body, so a hostile peer cannot make it buffer
//! more than one chunk.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol name a client offers (before `h2`) and a server that
/// speaks the framing selects.
pub const ALPN: &[u8] = b"p2p-chunks/1";
/// The ALPN protocol name of the holdings stream as frames (`WATCH`, then
/// `HOLDINGS` until either end closes): `PeerService/WatchHoldings`
/// without HTTP/2, on a connection of its own.
pub const HOLDINGS_ALPN: &[u8] = b"p2p-holdings/1";
/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 5;
/// Bytes of a `CHUNK` body before the chunk's data (its index).
pub const CHUNK_PREFIX_BYTES: usize = 4;
/// Largest `HELLO` body: a peer token and a proof.
pub const MAX_HELLO_BYTES: u32 = 16 * 1024;
/// Largest `FETCH` body: a file id, 1024 ranges and a bitfield of
/// [`crate::manifest::MAX_CHUNKS`] bits fit with room to spare.
pub const MAX_FETCH_BYTES: u32 = 64 * 1024;
/// Largest `ERROR` body.
pub const MAX_ERROR_BYTES: u32 = 4 * 1024;
/// Largest `WATCH` body: a `WatchHoldingsRequest` (a file id and a hint).
pub const MAX_WATCH_BYTES: u32 = 4 * 1024;
/// Largest `HOLDINGS` body: a `HoldingsUpdate` whose bitfield has
/// [`crate::manifest::MAX_CHUNKS`] bits, and 16 KiB for the rest.
pub const MAX_HOLDINGS_BYTES: u32 = (crate::manifest::MAX_CHUNKS / 8) as u32 + 16 * 1024;
/// Largest `CHUNK` body: the largest chunk and its index.
pub const MAX_CHUNK_FRAME_BYTES: u32 = crate::manifest::MAX_CHUNK_BYTES + CHUNK_PREFIX_BYTES as u32;

/// A frame's kind: those below `0x80` go from the downloader to the
/// source, the rest back. `WATCH` and `HOLDINGS` belong to
/// [`HOLDINGS_ALPN`] connections, the rest (but `HELLO`, `READY` and
/// `ERROR`, which both use) to [`ALPN`] ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client: the peer token and proof, once, first.
    Hello = 0x01,
    /// Client: the chunks it wants (a `FetchChunksRequest`).
    Fetch = 0x02,
    /// Client: the file whose holdings to follow (a `WatchHoldingsRequest`
    /// in protobuf).
    Watch = 0x03,
    /// Server: the credentials are good; send `FETCH`es.
    Ready = 0x81,
    /// Server: one chunk, its index then its bytes.
    Chunk = 0x82,
    /// Server: the answer to the current `FETCH` is complete.
    End = 0x83,
    /// Server: the current `FETCH` (or the `HELLO`) failed.
    Error = 0x84,
    /// Server: one holdings update (a `HoldingsUpdate` in protobuf).
    Holdings = 0x85,
}

impl Kind {
    /// The kind a header byte names.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => Self::Hello,
            0x02 => Self::Fetch,
            0x03 => Self::Watch,
            0x81 => Self::Ready,
            0x82 => Self::Chunk,
            0x83 => Self::End,
            0x84 => Self::Error,
            0x85 => Self::Holdings,
            _ => return None,
        })
    }

    /// Largest body a frame of this kind may have.
    pub fn max_body(self) -> u32 {
        match self {
            Self::Hello => MAX_HELLO_BYTES,
            Self::Fetch => MAX_FETCH_BYTES,
            Self::Ready => 0,
            Self::End => 4,
            Self::Chunk => MAX_CHUNK_FRAME_BYTES,
            Self::Error => MAX_ERROR_BYTES,
            Self::Watch => MAX_WATCH_BYTES,
            Self::Holdings => MAX_HOLDINGS_BYTES,
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended in the middle of a frame.
    #[error("the connection ended or failed inside a frame: {0}")]
    Io(#[from] std::io::Error),
    /// A header byte names no kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A kind the receiver does not expect here.
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    /// A body longer than its kind allows, or than the chunk asked for.
    #[error("{kind:?} frame of {len} bytes; at most {max}")]
    TooLarge {
        /// The frame's kind.
        kind: Kind,
        /// Its declared body length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A body whose fields do not parse.
    #[error("malformed {0:?} frame: {1}")]
    Malformed(Kind, &'static str),
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's kind.
    pub kind: Kind,
    /// Bytes of body after the header.
    pub len: u32,
}

impl Header {
    /// The header's bytes.
    pub fn encode(self) -> [u8; HEADER_BYTES] {
        let mut out = [0; HEADER_BYTES];
        out[..4].copy_from_slice(&self.len.to_be_bytes());
        out[4] = self.kind as u8;
        out
    }
}

/// Reads one header; `None` when the connection ended cleanly before it.
/// The length is checked against the kind's limit.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Header>, FrameError> {
    let mut bytes = [0u8; HEADER_BYTES];
    let first = reader.read(&mut bytes).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut bytes[first..]).await?;
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let kind = Kind::from_byte(bytes[4]).ok_or(FrameError::UnknownKind(bytes[4]))?;
    if len > kind.max_body() {
        return Err(FrameError::TooLarge {
            kind,
            len,
            max: kind.max_body(),
        });
    }
    Ok(Some(Header { kind, len }))
}

/// Reads a whole small frame (not a `CHUNK`) of one of the `expected`
/// kinds into a new buffer; `None` when the connection ended cleanly.
pub async fn read_small<R: AsyncRead + Unpin>(
    reader: &mut R,
    expected: &[Kind],
) -> Result<Option<(Kind, Vec<u8>)>, FrameError> {
    let Some(header) = read_header(reader).await? else {
        return Ok(None);
    };
    if !expected.contains(&header.kind) || header.kind == Kind::Chunk {
        return Err(FrameError::Unexpected(header.kind));
    }
    let mut body = vec![0; header.len as usize];
    reader.read_exact(&mut body).await?;
    Ok(Some((header.kind, body)))
}

/// A whole frame: header and body (the body within the kind's limit).
pub fn frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(
        &Header {
            kind,
            len: body.len() as u32,
        }
        .encode(),
    );
    out.extend_from_slice(body);
    out
}

/// Splits the fields of a body as they are read.
struct Fields<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Malformed(self.kind, what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self, len: usize, what: &'static str) -> Result<String, FrameError> {
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::Malformed(self.kind, what))
    }
}

/// `HELLO`: the credentials FetchChunks carries in `authorization` and
/// `x-p2p-peer-proof`, sent once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The peer token (without `Bearer `).
    pub token: String,
    /// The peer proof naming the source.
    pub proof: String,
}

impl Hello {
    /// The whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(4 + self.token.len() + self.proof.len());
        for field in [&self.token, &self.proof] {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field.as_bytes());
        }
        frame(Kind::Hello, &body)
    }

    /// From a `HELLO` body.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields {
            kind: Kind::Hello,
            rest: body,
        };
        let n = f.u16("token length")?;
        let token = f.text(n.into(), "token")?;
        let n = f.u16("proof length")?;
        let proof = f.text(n.into(), "proof")?;
        Ok(Self { token, proof })
    }
}

/// `FETCH`: a `FetchChunksRequest`, with the same meaning and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetch {
    /// The file.
    pub file_id: String,
    /// Named chunks as (start, count) runs, in the order wanted.
    pub ranges: Vec<(u32, u32)>,
    /// Instead of `ranges`: the bitfield of chunks the caller lacks.
    pub any_of: Vec<u8>,
    /// How many of `any_of` the source should choose.
    pub any_count: u32,
}

impl Fetch {
    /// The whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(
            1 + self.file_id.len() + 6 + self.ranges.len() * 8 + self.any_of.len(),
        );
        body.push(self.file_id.len().min(255) as u8);
        body.extend_from_slice(&self.file_id.as_bytes()[..self.file_id.len().min(255)]);
        body.extend_from_slice(&self.any_count.to_be_bytes());
        body.extend_from_slice(&(self.ranges.len() as u16).to_be_bytes());
        for &(start, count) in &self.ranges {
            body.extend_from_slice(&start.to_be_bytes());
            body.extend_from_slice(&count.to_be_bytes());
        }
        body.extend_from_slice(&self.any_of);
        frame(Kind::Fetch, &body)
    }

    /// From a `FETCH` body.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields {
            kind: Kind::Fetch,
            rest: body,
        };
        let n = f.take(1, "file id length")?[0];
        let file_id = f.text(n.into(), "file id")?;
        let any_count = f.u32("any count")?;
        let ranges = (0..f.u16("range count")?)
            .map(|_| Ok((f.u32("range start")?, f.u32("range count")?)))
            .collect::<Result<_, FrameError>>()?;
        Ok(Self {
            file_id,
            ranges,
            any_of: f.rest.to_vec(),
            any_count,
        })
    }
}

/// The `READY` frame.
pub fn ready() -> [u8; HEADER_BYTES] {
    Header {
        kind: Kind::Ready,
        len: 0,
    }
    .encode()
}

/// The `END` frame after `sent` chunks.
pub fn end(sent: u32) -> Vec<u8> {
    frame(Kind::End, &sent.to_be_bytes())
}

/// The header and index that go before chunk `index` of `data_len` bytes.
pub fn chunk_prefix(index: u32, data_len: u32) -> [u8; HEADER_BYTES + CHUNK_PREFIX_BYTES] {
    let mut out = [0; HEADER_BYTES + CHUNK_PREFIX_BYTES];
    out[..HEADER_BYTES].copy_from_slice(
        &Header {
            kind: Kind::Chunk,
            len: data_len + CHUNK_PREFIX_BYTES as u32,
        }
        .encode(),
    );
    out[HEADER_BYTES..].copy_from_slice(&index.to_be_bytes());
    out
}

/// The `ERROR` frame: a gRPC status code and a message for a person (cut
/// to fit [`MAX_ERROR_BYTES`] on a character boundary).
pub fn error(code: i32, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_ERROR_BYTES as usize - 4);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut body = Vec::with_capacity(4 + end);
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&message.as_bytes()[..end]);
    frame(Kind::Error, &body)
}

/// From an `ERROR` body: the gRPC status code and the message.
pub fn decode_error(body: &[u8]) -> Result<(i32, String), FrameError> {
    let mut f = Fields {
        kind: Kind::Error,
        rest: body,
    };
    let code = f.u32("code")? as i32;
    Ok((code, String::from_utf8_lossy(f.rest).into_owned()))
}

/// From an `ERROR` body: the status it carries, as FetchChunks or
/// WatchHoldings would have returned it.
pub fn decode_status(body: &[u8]) -> Result<tonic::Status, FrameError> {
    let (code, message) = decode_error(body)?;
    Ok(tonic::Status::new(tonic::Code::from_i32(code), message))
}

/// From an `END` body: how many chunks were sent.
pub fn decode_end(body: &[u8]) -> Result<u32, FrameError> {
    Fields {
        kind: Kind::End,
        rest: body,
    }
    .u32("count")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[HEADER_BYTES..]
    }

    #[test]
    fn hello_and_fetch_round_trip() {
        let hello = Hello {
            token: "t.o.k".into(),
            proof: "p.r.f".into(),
        };
        assert_eq!(Hello::decode(body(&hello.encode())).unwrap(), hello);
        let fetch = Fetch {
            file_id: "abc".into(),
            ranges: vec![(5, 2), (1, 1)],
            any_of: vec![0xf0, 0x01],
            any_count: 3,
        };
        assert_eq!(Fetch::decode(body(&fetch.encode())).unwrap(), fetch);
        let (code, message) = decode_error(body(&error(5, "not found"))).unwrap();
        assert_eq!((code, message.as_str()), (5, "not found"));
        assert_eq!(decode_end(body(&end(7))).unwrap(), 7);
    }

    #[test]
    fn short_bodies_are_malformed() {
        assert!(matches!(
            Fetch::decode(&[3, b'a']),
            Err(FrameError::Malformed(Kind::Fetch, "file id"))
        ));
        assert!(matches!(
            Hello::decode(&[0, 9, b'x']),
            Err(FrameError::Malformed(Kind::Hello, "token"))
        ));
    }

    #[tokio::test]
    async fn oversized_and_unknown_headers_are_refused_before_the_body() {
        let mut big = &Header {
            kind: Kind::Fetch,
            len: MAX_FETCH_BYTES + 1,
        }
        .encode()[..];
        assert!(matches!(
            read_header(&mut big).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut unknown = &[0u8, 0, 0, 0, 0x7f][..];
        assert!(matches!(
            read_header(&mut unknown).await,
            Err(FrameError::UnknownKind(0x7f))
        ));
        let mut truncated = &[0u8, 0][..];
        assert!(matches!(
            read_header(&mut truncated).await,
            Err(FrameError::Io(_))
        ));
        let mut empty = &[][..];
        assert!(matches!(read_header(&mut empty).await, Ok(None)));
    }

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(5000);
        let frame = error(2, &message);
        assert!(frame.len() <= HEADER_BYTES + MAX_ERROR_BYTES as usize);
        assert!(decode_error(body(&frame)).is_ok());
    }
}
