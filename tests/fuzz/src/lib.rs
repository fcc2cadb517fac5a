//! Shared pieces of the fuzz targets: how each target reads its input bytes
//! (so the seed generator can write meaningful seeds in the same layout),
//! the fixed Ed25519 key tokens are signed with, and the independent checks
//! ("oracles") a target asserts on whatever the code under test accepted.
//!
//! The layouts are deliberately simple and total: every byte string is a
//! valid input, so libFuzzer never wastes runs on inputs the harness drops.

use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use p2p_services::auth::{AUDIENCE, ISSUER, PublicKey};
use serde_json::{Map, Value, json};

/// Key id of the one key the token verifier under test knows.
pub const FUZZ_KID: &str = "fuzz-key";

/// Seed of the key the verifier trusts. Fixed so committed seed tokens stay
/// valid; it signs nothing outside the fuzz targets.
const FUZZ_SEED: [u8; 32] = [7; 32];
/// Seed of a key the verifier does not trust, used under the trusted kid.
const OTHER_SEED: [u8; 32] = [9; 32];

/// The key the verifier trusts.
pub fn fuzz_key() -> SigningKey {
    SigningKey::from_bytes(&FUZZ_SEED)
}

/// A key the verifier must never trust.
pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&OTHER_SEED)
}

/// The trusted key as the verifier is given it.
pub fn fuzz_public_key() -> PublicKey {
    PublicKey {
        kid: FUZZ_KID.to_string(),
        bytes: fuzz_key().verifying_key().to_bytes().to_vec(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- bitfield

/// Input of the `bitfield` target: the bytes and the chunk count to parse
/// them for.
#[derive(Debug)]
pub struct BitfieldInput<'a> {
    /// Claimed chunk count.
    pub len: u32,
    /// The received bytes.
    pub bytes: &'a [u8],
}

impl<'a> BitfieldInput<'a> {
    /// Byte 0 picks the mode. High bit clear: the count is derived from the
    /// byte count minus `byte0 & 7` spare bits, so most inputs have the
    /// right length and exercise the spare-bit check. High bit set: the
    /// next four bytes are an arbitrary little-endian count.
    pub fn parse(data: &'a [u8]) -> Self {
        let Some((&mode, rest)) = data.split_first() else {
            return Self { len: 0, bytes: &[] };
        };
        if mode & 0x80 == 0 {
            let bits = (rest.len() as u64 * 8).saturating_sub(u64::from(mode & 7));
            Self {
                len: u32::try_from(bits).unwrap_or(u32::MAX),
                bytes: rest,
            }
        } else {
            let mut len = [0u8; 4];
            let n = rest.len().min(4);
            len[..n].copy_from_slice(&rest[..n]);
            Self {
                len: u32::from_le_bytes(len),
                bytes: &rest[n..],
            }
        }
    }

    /// The layout [`parse`](Self::parse) reads, with an explicit count.
    pub fn encode(len: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        out
    }
}

// ----------------------------------------------------------- chunk ranges

/// Input of the `chunk_ranges` target.
#[derive(Debug)]
pub struct RangesInput {
    /// Chunk count of the file the request is for.
    pub chunk_count: u32,
    /// `(start, count)` pairs as they arrive in a FetchChunksRequest.
    pub ranges: Vec<(u32, u32)>,
}

impl RangesInput {
    /// Byte 0 bit 0 picks the field width: clear, every number is a u32
    /// (extremes, overflow); set, a u16 (plausible requests that pass the
    /// cap and bounds checks). Then the chunk count, then pairs.
    pub fn parse(data: &[u8]) -> Self {
        let Some((&mode, rest)) = data.split_first() else {
            return Self {
                chunk_count: 0,
                ranges: Vec::new(),
            };
        };
        let width = if mode & 1 == 0 { 4 } else { 2 };
        let mut numbers = rest.chunks(width).map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        });
        let chunk_count = numbers.next().unwrap_or(0);
        let numbers: Vec<u32> = numbers.collect();
        let ranges = numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        Self {
            chunk_count,
            ranges,
        }
    }

    /// The 32-bit layout [`parse`](Self::parse) reads.
    pub fn encode(chunk_count: u32, ranges: &[(u32, u32)]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&chunk_count.to_le_bytes());
        for (start, count) in ranges {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }
}

// ------------------------------------------------------------------ tokens

/// How a crafted token's segments are base64-encoded.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Encoding {
    /// What JWTs use: URL-safe alphabet, no padding.
    UrlNoPad,
    /// URL-safe with `=` padding.
    UrlPadded,
    /// Standard alphabet (`+`, `/`) with padding.
    Standard,
}

impl Encoding {
    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::UrlNoPad => URL_SAFE_NO_PAD.encode(bytes),
            Encoding::UrlPadded => URL_SAFE.encode(bytes),
            Encoding::Standard => STANDARD.encode(bytes),
        }
    }
}

/// What signature a crafted token carries.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Signing {
    /// A genuine signature by the trusted key.
    FuzzKey,
    /// A genuine signature by an untrusted key, under the trusted kid.
    OtherKey,
    /// An empty signature segment (what `alg: none` tokens carry).
    Empty,
    /// 64 bytes that are not a signature.
    Garbage(u8),
    /// The trusted key's signature with one bit flipped.
    FlippedBit(u16),
    /// No signature segment at all (two segments).
    Missing,
}

impl Signing {
    /// Picks a signing mode from one byte (the raw-JSON token layout).
    pub fn from_byte(b: u8) -> Self {
        match b % 6 {
            0 => Signing::FuzzKey,
            1 => Signing::OtherKey,
            2 => Signing::Empty,
            3 => Signing::Garbage(b),
            4 => Signing::FlippedBit(u16::from(b)),
            _ => Signing::Missing,
        }
    }
}

/// Assembles `header.payload.signature` from raw JSON bytes.
pub fn assemble_token(header: &[u8], payload: &[u8], signing: Signing, enc: Encoding) -> String {
    let input = format!("{}.{}", enc.encode(header), enc.encode(payload));
    let signature = match signing {
        Signing::FuzzKey => fuzz_key().sign(input.as_bytes()).to_bytes().to_vec(),
        Signing::OtherKey => other_key().sign(input.as_bytes()).to_bytes().to_vec(),
        Signing::Empty => Vec::new(),
        Signing::Garbage(b) => vec![b; 64],
        Signing::FlippedBit(bit) => {
            let mut sig = fuzz_key().sign(input.as_bytes()).to_bytes();
            let bit = usize::from(bit) % (sig.len() * 8);
            sig[bit / 8] ^= 1 << (bit % 8);
            sig.to_vec()
        }
        Signing::Missing => return input,
    };
    format!("{input}.{}", enc.encode(&signature))
}

/// A string-valued claim or header field: the right value, absent, another
/// string, or a value of the wrong JSON type.
#[derive(Debug, Clone, Arbitrary)]
pub enum Field {
    /// The value a genuine token carries.
    Expected,
    /// Not present.
    Missing,
    /// Some other string.
    Other(String),
    /// A number instead of a string.
    Number(i64),
    /// An array containing the expected value (valid JWT for `aud`).
    ArrayWithExpected,
    /// JSON null.
    Null,
}

impl Field {
    fn value(&self, expected: &str) -> Option<Value> {
        match self {
            Field::Expected => Some(json!(expected)),
            Field::Missing => None,
            Field::Other(s) => Some(json!(s)),
            Field::Number(n) => Some(json!(n)),
            Field::ArrayWithExpected => Some(json!([expected])),
            Field::Null => Some(Value::Null),
        }
    }
}

/// The token's `alg`.
#[derive(Debug, Clone, Arbitrary)]
pub enum Alg {
    /// What auth-svc signs with.
    EdDSA,
    /// One of the well-known other names, including every spelling of `none`.
    Known(u8),
    /// Anything.
    Other(String),
}

const KNOWN_ALGS: &[&str] = &[
    "none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "RS256", "ES256", "ES384", "PS256",
    "EdDSA ", "eddsa", "ED25519", "",
];

impl Alg {
    fn value(&self) -> Value {
        match self {
            Alg::EdDSA => json!("EdDSA"),
            Alg::Known(i) => json!(KNOWN_ALGS[usize::from(*i) % KNOWN_ALGS.len()]),
            Alg::Other(s) => json!(s),
        }
    }
}

/// When the token expires.
#[derive(Debug, Clone, Arbitrary)]
pub enum Exp {
    /// Some seconds after now (at least a minute).
    Future(u32),
    /// Some seconds before now, past the leeway.
    Past(u32),
    /// Any number.
    Raw(i64),
    /// A float a little in the future.
    Float(f64),
    /// A string.
    Text(String),
    /// Not present.
    Missing,
}

impl Exp {
    fn value(&self, now: i64) -> Option<Value> {
        match self {
            Exp::Future(s) => Some(json!(now + 60 + i64::from(*s))),
            Exp::Past(s) => Some(json!(now - 31 - i64::from(*s))),
            Exp::Raw(n) => Some(json!(n)),
            Exp::Float(f) => Some(json!(*f)),
            Exp::Text(s) => Some(json!(s)),
            Exp::Missing => None,
        }
    }
}

/// A structured token: each header field and claim valid or perturbed.
#[derive(Debug, Clone, Arbitrary)]
pub struct CraftedToken {
    /// `alg` header.
    pub alg: Alg,
    /// `kid` header (expected: the trusted kid).
    pub kid: Field,
    /// `typ` header.
    pub typ: Option<String>,
    /// One extra header field, possibly shadowing a known one.
    pub header_extra: Option<(String, String)>,
    /// `iss` claim.
    pub iss: Field,
    /// `aud` claim.
    pub aud: Field,
    /// `sub` claim.
    pub sub: Field,
    /// `name` claim.
    pub name: Field,
    /// `role` claim (expected: `user`; `admin` via Other).
    pub role: Field,
    /// `iat` claim.
    pub iat: Option<i64>,
    /// `exp` claim.
    pub exp: Exp,
    /// `jti` claim.
    pub jti: Field,
    /// One extra claim, possibly shadowing a known one.
    pub claims_extra: Option<(String, String)>,
    /// Segment encoding.
    pub encoding: Encoding,
    /// Signature.
    pub signing: Signing,
}

impl CraftedToken {
    /// The token text, given the current time.
    pub fn build(&self, now: i64) -> String {
        let mut header = Map::new();
        header.insert("alg".into(), self.alg.value());
        if let Some(kid) = self.kid.value(FUZZ_KID) {
            header.insert("kid".into(), kid);
        }
        if let Some(typ) = &self.typ {
            header.insert("typ".into(), json!(typ));
        }
        if let Some((k, v)) = &self.header_extra {
            header.insert(k.clone(), json!(v));
        }
        let mut claims = Map::new();
        let fields = [
            ("iss", &self.iss, ISSUER),
            ("aud", &self.aud, AUDIENCE),
            ("sub", &self.sub, "user-1"),
            ("name", &self.name, "alice"),
            ("role", &self.role, "user"),
            ("jti", &self.jti, "token-1"),
        ];
        for (key, field, expected) in fields {
            if let Some(v) = field.value(expected) {
                claims.insert(key.into(), v);
            }
        }
        if let Some(iat) = self.iat {
            claims.insert("iat".into(), json!(iat));
        }
        if let Some(exp) = self.exp.value(now) {
            claims.insert("exp".into(), exp);
        }
        if let Some((k, v)) = &self.claims_extra {
            claims.insert(k.clone(), json!(v));
        }
        assemble_token(
            Value::Object(header).to_string().as_bytes(),
            Value::Object(claims).to_string().as_bytes(),
            self.signing,
            self.encoding,
        )
    }

    /// Whether this is exactly what auth-svc issues, so the verifier must
    /// accept it (the oracle that catches a verifier refusing good tokens).
    pub fn is_genuine(&self) -> bool {
        let plain = |f: &Field| matches!(f, Field::Expected | Field::Other(_));
        matches!(self.alg, Alg::EdDSA)
            && matches!(self.kid, Field::Expected)
            && self.typ.as_deref().is_none_or(|t| t == "JWT")
            && self.header_extra.is_none()
            && matches!(self.iss, Field::Expected)
            && matches!(self.aud, Field::Expected)
            && plain(&self.sub)
            && plain(&self.name)
            && matches!(self.role, Field::Expected)
            && self.iat.is_some()
            && matches!(self.exp, Exp::Future(_))
            && plain(&self.jti)
            && self.claims_extra.is_none()
            && matches!(self.encoding, Encoding::UrlNoPad)
            && matches!(self.signing, Signing::FuzzKey)
    }
}

/// Byte that separates header from payload in the raw-JSON token layout
/// (never part of UTF-8 text).
pub const JSON_SEPARATOR: u8 = 0xff;

/// Input of the `token` target.
#[derive(Debug)]
pub enum TokenInput {
    /// Any string, verified as is.
    Raw(String),
    /// A structured token.
    Crafted(Box<CraftedToken>),
    /// Raw header and payload bytes (JSON or not), signed as chosen.
    RawJson {
        /// Header bytes.
        header: Vec<u8>,
        /// Payload bytes.
        payload: Vec<u8>,
        /// Signature.
        signing: Signing,
    },
}

impl TokenInput {
    /// Byte 0 mod 3 picks the layout: 0, the rest is the token text; 1, the
    /// rest drives [`CraftedToken`] through `arbitrary`; 2, byte 1 picks
    /// the signing and the rest is `header 0xff payload`.
    pub fn parse(data: &[u8]) -> Self {
        let Some((&mode, rest)) = data.split_first() else {
            return TokenInput::Raw(String::new());
        };
        match mode % 3 {
            0 => TokenInput::Raw(String::from_utf8_lossy(rest).into_owned()),
            1 => {
                let mut u = arbitrary::Unstructured::new(rest);
                match CraftedToken::arbitrary(&mut u) {
                    Ok(t) => TokenInput::Crafted(Box::new(t)),
                    Err(_) => TokenInput::Raw(String::from_utf8_lossy(rest).into_owned()),
                }
            }
            _ => {
                let (signing, body) = match rest.split_first() {
                    Some((&b, body)) => (Signing::from_byte(b), body),
                    None => (Signing::FuzzKey, rest),
                };
                let mut parts = body.splitn(2, |&b| b == JSON_SEPARATOR);
                let header = parts.next().unwrap_or_default().to_vec();
                let payload = parts.next().unwrap_or_default().to_vec();
                TokenInput::RawJson {
                    header,
                    payload,
                    signing,
                }
            }
        }
    }

    /// The raw-text layout.
    pub fn encode_raw(token: &str) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(token.as_bytes());
        out
    }

    /// The raw-JSON layout; `signing` is 0 for the trusted key (see
    /// [`Signing::from_byte`]).
    pub fn encode_json(signing: u8, header: &str, payload: &str) -> Vec<u8> {
        let mut out = vec![2, signing];
        out.extend_from_slice(header.as_bytes());
        out.push(JSON_SEPARATOR);
        out.extend_from_slice(payload.as_bytes());
        out
    }
}

/// Whether the token's last segment is a valid signature by the trusted
/// key over everything before the last `.`, the way a JWT is signed.
/// Decoding is lenient on padding so the check never under-reports.
pub fn signed_by_fuzz_key(token: &str) -> bool {
    let Some((message, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Ok(bytes) = lenient.decode(signature) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let key: VerifyingKey = fuzz_key().verifying_key();
    key.verify(
        message.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&bytes),
    )
    .is_ok()
}

/// The token's payload segment parsed on its own, for a differential check
/// against what the verifier returned.
pub fn payload_json(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let payload = parts.nth(1)?;
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = lenient.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A genuine token for the seed corpus, valid until 2100.
pub fn genuine_token() -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": FUZZ_KID});
    let claims = genuine_claims_json();
    assemble_token(
        header.to_string().as_bytes(),
        claims.as_bytes(),
        Signing::FuzzKey,
        Encoding::UrlNoPad,
    )
}

/// The claims JSON of [`genuine_token`].
pub fn genuine_claims_json() -> String {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "0b7d3c1e-user", "name": "alice",
        "role": "admin", "iat": 1_767_225_600i64, "exp": 4_102_444_800i64,
        "jti": "4f1c2a9e-token",
    })
    .to_string()
}
