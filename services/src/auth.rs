//! Token verification, the one place where a bearer token is parsed.
//!
//! Two kinds of token exist, told apart by their audience:
//! - **access tokens** ([`AUDIENCE`], [`Claims`]): the control plane. Only
//!   auth-svc and index-svc accept them, and an agent sends them nowhere
//!   else.
//! - **peer tokens** ([`PEER_AUDIENCE`], [`PeerClaims`]): the data path.
//!   auth-svc issues one to an agent for the agent's own Ed25519 key (the
//!   `cnf` claim), living as long as an access token. Alone it opens
//!   nothing: every FetchChunks call also carries a **peer proof**
//!   ([`PEER_PROOF_HEADER`], [`ProofClaims`]) that the agent signs with that
//!   key for one source (`peer` = the source's peer id), living at most
//!   [`PEER_PROOF_TTL`]. A PeerService accepts the pair only when the proof
//!   names itself, so a source that records what a downloader sends it can
//!   replay it nowhere: not to auth-svc or index-svc (wrong audience), not
//!   to another peer (the proof names the recorder), and it cannot make a
//!   new proof without the downloader's private key. Because the agent signs
//!   proofs itself, downloads need auth-svc only to renew the peer token.
//!
//! auth-svc signs both with Ed25519 (`alg: EdDSA`) and names the key
//! in the `kid` header. Every other service holds a [`TokenVerifier`] that
//! caches auth-svc's public keys (fetched with `GetSigningKeys`), refetches
//! them when a token names an unknown `kid` (at most once per
//! [`REFETCH_INTERVAL`]), and keeps verifying with the cached keys while
//! auth-svc is down. [`RequireAuth`] wraps a tonic service so that handlers
//! only ever see verified [`Claims`] in the request extensions.
//!
//! **Architecture Invariant:** no handler reads the `authorization` header;
//! they call [`claims`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use p2p_proto::auth::v1::GetSigningKeysRequest;
use p2p_proto::auth::v1::auth_service_client::AuthServiceClient;

use crate::client::PEER_PROOF_HEADER;

/// The `iss` claim of every access token.
pub const ISSUER: &str = "p2p-auth";
/// The `aud` claim of every access token.
pub const AUDIENCE: &str = "p2p-network";
/// The `aud` claim of every peer (data-path) token.
pub const PEER_AUDIENCE: &str = "p2p-peer";
/// The `aud` claim of every peer proof.
pub const PEER_PROOF_AUDIENCE: &str = "p2p-peer-proof";
/// Longest a peer proof may live (`exp - iat`): a downloader reuses one for
/// a source for a while, and a leaked one is soon worthless.
pub const PEER_PROOF_TTL: Duration = Duration::from_secs(120);
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Minimum time between two key fetches triggered by unknown `kid`s.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// What an account may do. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Shares, downloads, deletes its own files.
    User,
    /// Also administers accounts and deletes any file.
    Admin,
}

impl Role {
    /// The stored and claimed name: `user` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The claims of a verified access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Audience, always [`AUDIENCE`].
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The username at issue time.
    pub name: String,
    /// The role at issue time.
    pub role: Role,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

impl Claims {
    /// Whether the token's user is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The claims of a verified peer token: who is downloading, and the key
/// their agent proves each call with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerClaims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Audience, always [`PEER_AUDIENCE`].
    pub aud: String,
    /// The downloading user's id.
    pub sub: String,
    /// The downloading user's name at issue time.
    pub name: String,
    /// The agent's Ed25519 public key, base64url without padding.
    pub cnf: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

/// The claims of a peer proof, signed by the downloading agent's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofClaims {
    /// Audience, always [`PEER_PROOF_AUDIENCE`].
    pub aud: String,
    /// The peer id of the one source this proof is for.
    pub peer: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds; at most [`PEER_PROOF_TTL`] after `iat`.
    pub exp: i64,
    /// Unique proof id.
    pub jti: String,
}

/// An agent's data-path key: its public half goes into the peer token
/// auth-svc issues, its private half signs a proof per source. Generated at
/// start, kept in memory only.
pub struct AgentKey {
    public: PublicKey,
    encoding: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("public", &self.public.to_base64url())
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        Self {
            public: PublicKey {
                kid: String::new(),
                bytes: signing.verifying_key().to_bytes().to_vec(),
            },
            encoding: jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        }
    }

    /// The public key as the `cnf` claim carries it.
    pub fn public_base64url(&self) -> String {
        self.public.to_base64url()
    }

    /// A proof for fetching from `source_peer_id`, valid `ttl` (capped at
    /// [`PEER_PROOF_TTL`]) from `now_secs`.
    pub fn prove(&self, source_peer_id: &str, now_secs: i64, ttl: Duration) -> String {
        let ttl = ttl.min(PEER_PROOF_TTL).as_secs() as i64;
        let claims = ProofClaims {
            aud: PEER_PROOF_AUDIENCE.to_string(),
            peer: source_peer_id.to_string(),
            iat: now_secs,
            exp: now_secs + ttl,
            jti: uuid_like(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &claims,
            &self.encoding,
        )
        .expect("signing with an in-memory Ed25519 key cannot fail")
    }
}

/// 128 random bits as hex, for `jti`.
fn uuid_like() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// This agent's own peer id as the index knows it, shared between the
/// session (which learns it on registration) and the PeerService guard
/// (which accepts only peer tokens naming it). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(Arc<RwLock<Option<String>>>);

impl PeerIdentity {
    /// Records our peer id (`None` while unregistered).
    pub fn set(&self, peer_id: Option<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = peer_id;
    }

    /// Our peer id, once registered.
    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why a token was rejected. Converted to `Unauthenticated` (or
/// `Unavailable` when the keys cannot be had) in one place.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` metadata.
    #[error("missing access token: send `authorization: Bearer <token>` (log in first)")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    /// The token names a key nobody published.
    #[error("access token signed by an unknown key (kid {0:?}): log in again")]
    UnknownKey(String),
    /// The token has no `kid` header.
    #[error("access token has no key id")]
    NoKeyId,
    /// The token is expired.
    #[error("access token expired: refresh it or log in again")]
    Expired,
    /// A peer token without the proof that must accompany it.
    #[error("missing peer proof: send `x-p2p-peer-proof` signed with the key of the peer token")]
    MissingProof,
    /// The proof names another source.
    #[error("this peer proof was made for another peer")]
    WrongPeer,
    /// A peer token reached a peer that is not registered yet.
    #[error("this peer is not registered with the index yet; try again shortly")]
    NotRegistered,
    /// Signature, algorithm, audience, issuer or format is wrong.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// A well-formed token of another kind than this service takes (its
    /// claimed audience says which), such as an access token sent to a
    /// PeerService.
    #[error("wrong credential: this service takes {takes}, not {sent}")]
    WrongCredential {
        /// The credential this service takes.
        takes: &'static str,
        /// What the token claims to be.
        sent: String,
    },
    /// No keys are cached and auth-svc cannot be reached.
    #[error("cannot verify tokens: auth service unreachable and no signing keys cached ({0})")]
    KeysUnavailable(String),
}

impl From<TokenError> for Status {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::KeysUnavailable(_) => Status::unavailable(err.to_string()),
            _ => Status::unauthenticated(err.to_string()),
        }
    }
}

/// One public key as published by auth-svc.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// Key id.
    pub kid: String,
    /// Raw 32-byte Ed25519 public key.
    pub bytes: Vec<u8>,
}

impl PublicKey {
    /// Parses a `SigningKey` message's base64url key.
    pub fn from_base64url(kid: &str, b64: &str) -> Result<Self, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|e| format!("key {kid}: bad base64url: {e}"))?;
        if bytes.len() != 32 {
            return Err(format!("key {kid}: expected 32 bytes, got {}", bytes.len()));
        }
        Ok(Self {
            kid: kid.to_string(),
            bytes,
        })
    }

    /// The base64url form published in `SigningKey.public_key`.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.bytes)
    }
}

struct Remote {
    auth_url: String,
    tls: crate::tls::ClientTls,
    last_fetch: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
}

struct Inner {
    keys: RwLock<HashMap<String, DecodingKey>>,
    validation: Validation,
    peer_validation: Validation,
    remote: Option<Remote>,
    /// Peer token and proof pairs already verified (see [`ProvenPeers`]).
    proven: Mutex<ProvenPeers>,
}

/// Most verified peer credential pairs remembered.
const MAX_PROVEN_PEERS: usize = 4096;

/// Peer token and proof pairs this verifier already checked, by the hash
/// of both, until the earlier of their expiries: a downloader sends the same
/// pair with every FetchChunks call to a source for up to a minute, and two
/// Ed25519 verifications per call were the data path's biggest crypto cost.
/// Only a byte-identical pair matches, so this accepts nothing the full
/// check would refuse, except a signing key withdrawn before its tokens
/// expired (auth-svc keeps a key published until its last token expires).
#[derive(Default)]
struct ProvenPeers {
    pairs: HashMap<[u8; 32], ProvenPeer>,
}

struct ProvenPeer {
    claims: PeerClaims,
    /// The peer the proof names.
    peer: String,
    /// Unix seconds after which the pair is checked in full again.
    until: i64,
}

impl ProvenPeers {
    fn key(token: &str, proof: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(token.len() as u64).to_le_bytes());
        hasher.update(token.as_bytes());
        hasher.update(proof.as_bytes());
        *hasher.finalize().as_bytes()
    }

    fn get(&self, key: &[u8; 32], now: i64) -> Option<&ProvenPeer> {
        self.pairs.get(key).filter(|p| now < p.until)
    }

    fn insert(&mut self, key: [u8; 32], peer: ProvenPeer, now: i64) {
        if self.pairs.len() >= MAX_PROVEN_PEERS {
            self.pairs.retain(|_, p| now < p.until);
            if self.pairs.len() >= MAX_PROVEN_PEERS {
                self.pairs.clear();
            }
        }
        self.pairs.insert(key, peer);
    }
}

/// Verifies access tokens. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .inner
            .keys
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("TokenVerifier")
            .field("kids", &kids)
            .finish()
    }
}

impl TokenVerifier {
    fn with_remote(remote: Option<Remote>) -> Self {
        let validation_for = |audience: &str| {
            let mut validation = Validation::new(Algorithm::EdDSA);
            validation.set_issuer(&[ISSUER]);
            validation.set_audience(&[audience]);
            validation.leeway = LEEWAY.as_secs();
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation
        };
        Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(HashMap::new()),
                validation: validation_for(AUDIENCE),
                peer_validation: validation_for(PEER_AUDIENCE),
                remote,
                proven: Mutex::new(ProvenPeers::default()),
            }),
        }
    }

    /// A verifier with a fixed key set (auth-svc verifies its own tokens).
    pub fn with_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let verifier = Self::with_remote(None);
        verifier.install(keys);
        verifier
    }

    /// A verifier that fetches keys from auth-svc at `auth_url` on demand.
    pub fn remote(auth_url: &str, tls: crate::tls::ClientTls) -> Self {
        Self::with_remote(Some(Remote {
            auth_url: auth_url.to_string(),
            tls,
            last_fetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Replaces the cached keys with `keys`: a key left out stops
    /// verifying, so a key auth-svc no longer publishes is forgotten.
    pub fn install(&self, keys: impl IntoIterator<Item = PublicKey>) {
        let mut fresh = HashMap::new();
        for key in keys {
            let x = key.to_base64url();
            match DecodingKey::from_ed_components(&x) {
                Ok(decoding) => {
                    fresh.insert(key.kid, decoding);
                }
                Err(err) => tracing::warn!(kid = %key.kid, %err, "ignoring unusable signing key"),
            }
        }
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// Number of cached keys.
    pub fn cached_keys(&self) -> usize {
        self.inner.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Fetches auth-svc's keys now and replaces the cache with them (no-op
    /// for a fixed key set). Callers may do this at start-up to warm the
    /// cache. Failures, including an answer with no usable key, are
    /// returned and leave the cache as it was, so verification goes on with
    /// the cached keys while auth-svc is down or confused.
    pub async fn refresh(&self) -> Result<usize, TokenError> {
        let Some(remote) = &self.inner.remote else {
            return Ok(self.cached_keys());
        };
        let _guard = remote.fetch_lock.lock().await;
        if let Ok(mut last) = remote.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let channel = crate::client::channel(&remote.auth_url, &remote.tls)
            .map_err(|e| TokenError::KeysUnavailable(e.to_string()))?;
        let mut client = AuthServiceClient::new(channel);
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_signing_keys(GetSigningKeysRequest {}),
        )
        .await
        .map_err(|_| TokenError::KeysUnavailable(format!("{} timed out", remote.auth_url)))?
        .map_err(|s| TokenError::KeysUnavailable(format!("{}: {}", remote.auth_url, s.message())))?
        .into_inner();
        let mut keys = Vec::new();
        for key in response.keys {
            match PublicKey::from_base64url(&key.kid, &key.public_key) {
                Ok(k) => keys.push(k),
                Err(err) => tracing::warn!(%err, "auth-svc published an unusable key"),
            }
        }
        let count = keys.len();
        if count == 0 {
            return Err(TokenError::KeysUnavailable(format!(
                "{} published no usable signing key",
                remote.auth_url
            )));
        }
        self.install(keys);
        tracing::debug!(count, "fetched signing keys");
        Ok(count)
    }

    fn may_refetch(&self) -> bool {
        let Some(remote) = &self.inner.remote else {
            return false;
        };
        match remote.last_fetch.lock() {
            Ok(last) => last.is_none_or(|t| t.elapsed() >= REFETCH_INTERVAL),
            Err(_) => true,
        }
    }

    /// Verifies a bare access token (no `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_as(token, &self.inner.validation, AUDIENCE)
            .await
    }

    /// Verifies a bare peer token and the proof beside it: the token is
    /// auth-svc's, the proof is signed with the token's `cnf` key, lives at
    /// most [`PEER_PROOF_TTL`], and names `own_peer_id`.
    pub async fn verify_peer(
        &self,
        token: &str,
        proof: Option<&str>,
        own_peer_id: Option<&str>,
    ) -> Result<PeerClaims, TokenError> {
        let Some(proof) = proof else {
            // The token's own faults come first, as without a proof at all.
            let _: PeerClaims = self
                .verify_as(token, &self.inner.peer_validation, PEER_AUDIENCE)
                .await?;
            return Err(TokenError::MissingProof);
        };
        let now = crate::time::now_ms() / 1000;
        let key = ProvenPeers::key(token, proof);
        let known = self
            .proven()
            .get(&key, now)
            .map(|p| (p.claims.clone(), p.peer.clone()));
        let (claims, peer) = match known {
            Some(known) => known,
            None => {
                let (claims, proven) = self.verify_peer_pair(token, proof).await?;
                let until = claims.exp.min(proven.exp);
                self.proven().insert(
                    key,
                    ProvenPeer {
                        claims: claims.clone(),
                        peer: proven.peer.clone(),
                        until,
                    },
                    now,
                );
                (claims, proven.peer)
            }
        };
        match own_peer_id {
            None => Err(TokenError::NotRegistered),
            Some(own) if own == peer => Ok(claims),
            Some(_) => Err(TokenError::WrongPeer),
        }
    }

    fn proven(&self) -> std::sync::MutexGuard<'_, ProvenPeers> {
        self.inner.proven.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The full check of a peer token and its proof (signatures, audiences,
    /// lifetimes), without the peer the proof must name.
    async fn verify_peer_pair(
        &self,
        token: &str,
        proof: &str,
    ) -> Result<(PeerClaims, ProofClaims), TokenError> {
        let claims: PeerClaims = self
            .verify_as(token, &self.inner.peer_validation, PEER_AUDIENCE)
            .await?;
        let key = PublicKey::from_base64url("cnf", &claims.cnf).map_err(TokenError::Invalid)?;
        let key = DecodingKey::from_ed_components(&key.to_base64url())
            .map_err(|e| TokenError::Invalid(format!("unusable cnf key: {e}")))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[PEER_PROOF_AUDIENCE]);
        validation.leeway = LEEWAY.as_secs();
        validation.set_required_spec_claims(&["exp", "aud"]);
        let proven = jsonwebtoken::decode::<ProofClaims>(proof, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(format!("peer proof: {e}")),
            })?
            .claims;
        if proven.exp - proven.iat > PEER_PROOF_TTL.as_secs() as i64 {
            return Err(TokenError::Invalid(format!(
                "peer proof lives {} s; at most {} s",
                proven.exp - proven.iat,
                PEER_PROOF_TTL.as_secs()
            )));
        }
        Ok((claims, proven))
    }

    /// Verifies `token` as one for `audience` (the audience `validation`
    /// checks). A token that claims another audience is refused as the
    /// wrong credential before its claims are read: they are another
    /// kind's, and the parser's complaint about them would only mislead.
    async fn verify_as<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
        audience: &'static str,
    ) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("cannot read header: {e}")))?;
        if let Some(sent) = claimed_audience(token)
            && sent != audience
        {
            return Err(TokenError::WrongCredential {
                takes: credential(audience),
                sent: credential(&sent).to_string(),
            });
        }
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        if let Some(result) = self.verify_with_cached(token, &kid, validation) {
            return result;
        }
        if self.may_refetch() {
            if let Err(err) = self.refresh().await {
                if self.cached_keys() == 0 {
                    return Err(err);
                }
                tracing::warn!(%err, "cannot refetch signing keys; using cached ones");
            }
            if let Some(result) = self.verify_with_cached(token, &kid, validation) {
                return result;
            }
        }
        Err(TokenError::UnknownKey(kid))
    }

    fn verify_with_cached<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        kid: &str,
        validation: &Validation,
    ) -> Option<Result<T, TokenError>> {
        let cache = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = cache.get(kid)?;
        Some(
            jsonwebtoken::decode::<T>(token, key, validation)
                .map(|data| data.claims)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid(e.to_string()),
                }),
        )
    }

    /// Verifies the value of an `authorization` header as an access token.
    pub async fn verify_header(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<Claims, TokenError> {
        self.verify(bearer(header)?).await
    }
}

/// The `aud` a token claims, read without verifying anything: only to say
/// which credential was sent when it is the wrong one.
fn claimed_audience(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Audience {
        aud: String,
    }
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    serde_json::from_slice::<Audience>(&payload)
        .ok()
        .map(|claims| claims.aud)
}

/// The credential a token for `audience` is, in a person's words.
fn credential(audience: &str) -> &'static str {
    match audience {
        AUDIENCE => "an access token (what logging in gives; only auth-svc and index-svc take it)",
        PEER_AUDIENCE => {
            "a peer token from auth-svc's IssuePeerToken with a peer proof in \
             `x-p2p-peer-proof` (what agents send each other's PeerService)"
        }
        PEER_PROOF_AUDIENCE => "a peer proof (it goes beside a peer token)",
        _ => "a token for another service",
    }
}

/// The token in an `authorization: Bearer <token>` header.
fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, TokenError> {
    let value = header.ok_or(TokenError::Missing)?;
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(TokenError::Malformed)?
        .trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token)
}

/// The verified claims of a request that passed [`RequireAuth`].
pub fn claims<T>(request: &tonic::Request<T>) -> Result<&Claims, Status> {
    request
        .extensions()
        .get::<Claims>()
        .ok_or_else(|| Status::unauthenticated("missing access token: log in first"))
}

/// The verified peer claims of a request that passed [`RequireAuth::peer`].
pub fn peer_claims<T>(request: &tonic::Request<T>) -> Result<&PeerClaims, Status> {
    request
        .extensions()
        .get::<PeerClaims>()
        .ok_or_else(|| Status::unauthenticated("missing peer token"))
}

/// Like [`claims`], and also requires the admin role.
pub fn admin_claims<T>(request: &tonic::Request<T>) -> Result<&Claims, Status> {
    let claims = claims(request)?;
    if claims.is_admin() {
        Ok(claims)
    } else {
        Err(Status::permission_denied(
            "this needs the admin role; ask an administrator",
        ))
    }
}

/// Which kind of token a [`RequireAuth`] accepts.
#[derive(Clone)]
enum Scope {
    /// Access tokens, with some methods open to anyone.
    Access { public: &'static [&'static str] },
    /// Peer tokens naming this peer.
    Peer(PeerIdentity),
}

/// Wraps a tonic service so every call must carry a valid token of one
/// kind: access tokens ([`RequireAuth::new`], except the methods listed as
/// public, full paths such as `/p2p.auth.v1.AuthService/Login`), or peer
/// tokens naming this peer ([`RequireAuth::peer`]). Verified [`Claims`] or
/// [`PeerClaims`] land in the request extensions; a bad token, or a token
/// of the other kind, is answered with `Unauthenticated` without reaching
/// the handler.
#[derive(Clone)]
pub struct RequireAuth<S> {
    inner: S,
    verifier: TokenVerifier,
    scope: Scope,
}

impl<S> RequireAuth<S> {
    /// Every method of `inner` needs an access token.
    pub fn new(inner: S, verifier: TokenVerifier) -> Self {
        Self {
            inner,
            verifier,
            scope: Scope::Access { public: &[] },
        }
    }

    /// Every method of `inner` needs a peer token issued for `identity`.
    pub fn peer(inner: S, verifier: TokenVerifier, identity: PeerIdentity) -> Self {
        Self {
            inner,
            verifier,
            scope: Scope::Peer(identity),
        }
    }

    /// Methods listed by full path need no token; a token they carry anyway
    /// is verified and its claims passed on when valid.
    pub fn with_public(mut self, public: &'static [&'static str]) -> Self {
        self.scope = Scope::Access { public };
        self
    }
}

impl<S: NamedService> NamedService for RequireAuth<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for RequireAuth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that serves the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let scope = self.scope.clone();
        Box::pin(async move {
            let header = request.headers().get(http::header::AUTHORIZATION).cloned();
            let verdict = match scope {
                Scope::Access { public } => {
                    let public = public.contains(&request.uri().path());
                    match verifier.verify_header(header.as_ref()).await {
                        Ok(claims) => {
                            request.extensions_mut().insert(claims);
                            Ok(())
                        }
                        Err(_) if public => Ok(()),
                        Err(err) => Err(err),
                    }
                }
                Scope::Peer(identity) => match bearer(header.as_ref()) {
                    Ok(token) => verifier
                        .verify_peer(
                            token,
                            request
                                .headers()
                                .get(PEER_PROOF_HEADER)
                                .and_then(|v| v.to_str().ok()),
                            identity.get().as_deref(),
                        )
                        .await
                        .map(|claims| {
                            request.extensions_mut().insert(claims);
                        }),
                    Err(err) => Err(err),
                },
            };
            if let Err(err) = verdict {
                tracing::debug!(path = %request.uri().path(), %err, "rejected call");
                return Ok(Status::from(err).into_http());
            }
            inner.call(request).await
        })
    }
}
