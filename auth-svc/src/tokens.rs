//! Token material: Ed25519 signing keys (kept in the database as PKCS#8
//! DER so a restart keeps everyone's sessions), signing access tokens with
//! the shared [`Claims`] and peer tokens with [`PeerClaims`] (bound to the
//! agent key checked by [`parse_agent_key`]), and opaque refresh tokens
//! that are only ever stored as a BLAKE3 hash.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p2p_services::auth::{AUDIENCE, Claims, ISSUER, PEER_AUDIENCE, PeerClaims, PublicKey, Role};
use rand::RngCore;
use rand::rngs::OsRng;
use serde::Serialize;

use crate::error::Error;

/// One Ed25519 key pair with its key id.
#[derive(Clone)]
pub struct KeyPair {
    /// Key id: the first 16 hex digits of BLAKE3(public key).
    pub kid: String,
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).finish()
    }
}

impl KeyPair {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate(&mut OsRng))
    }

    fn from_signing(signing: SigningKey) -> Self {
        let public = signing.verifying_key();
        let kid = hex::encode(&blake3::hash(public.as_bytes()).as_bytes()[..8]);
        Self { kid, signing }
    }

    /// Loads a key stored as PKCS#8 DER; the kid is recomputed and must
    /// match the stored one, so a corrupted row is noticed at start-up.
    pub fn from_der(kid: &str, der: &[u8]) -> Result<Self, Error> {
        let signing = SigningKey::from_pkcs8_der(der)
            .map_err(|e| Error::Internal(format!("signing key {kid} is unreadable: {e}")))?;
        let pair = Self::from_signing(signing);
        if pair.kid != kid {
            return Err(Error::Internal(format!(
                "signing key {kid} does not match its id (computed {})",
                pair.kid
            )));
        }
        Ok(pair)
    }

    /// The private key as PKCS#8 DER, for the database.
    pub fn to_der(&self) -> Result<Vec<u8>, Error> {
        self.signing
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|e| Error::Internal(format!("cannot encode signing key: {e}")))
    }

    /// The public half, as published by `GetSigningKeys`.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            kid: self.kid.clone(),
            bytes: self.signing.verifying_key().as_bytes().to_vec(),
        }
    }
}

/// Signs tokens with one key (the one that signs now).
#[derive(Clone)]
pub struct Signer {
    key: KeyPair,
    encoding: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.key.kid)
            .finish()
    }
}

/// An access token and when it expires.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The compact JWT.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl Signer {
    /// A signer using `key`.
    pub fn new(key: KeyPair) -> Result<Self, Error> {
        let encoding = EncodingKey::from_ed_der(&key.to_der()?);
        Ok(Self { key, encoding })
    }

    /// The key id tokens carry.
    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// Signs arbitrary claims with this key (`alg: EdDSA`, `kid` header).
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("cannot sign token: {e}")))
    }

    /// Issues an access token with id `jti` for a user, valid for `ttl`
    /// from `now_ms`.
    pub fn issue(
        &self,
        user_id: &str,
        username: &str,
        role: Role,
        jti: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<AccessToken, Error> {
        let iat = now_ms / 1000;
        let exp = iat + ttl.as_secs().max(1) as i64;
        let jti = jti.to_string();
        let claims = Claims {
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
            sub: user_id.to_string(),
            name: username.to_string(),
            role,
            iat,
            exp,
            jti: jti.clone(),
        };
        Ok(AccessToken {
            token: self.sign(&claims)?,
            jti,
            expires_at_ms: exp * 1000,
        })
    }

    /// Issues a peer token with id `jti`: user `user_id` (`username`) may
    /// fetch chunks with proofs signed by `agent_key` (the `cnf` claim),
    /// for `ttl` from `now_ms`.
    pub fn issue_peer(
        &self,
        user_id: &str,
        username: &str,
        agent_key: &PublicKey,
        jti: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<PeerToken, Error> {
        let iat = now_ms / 1000;
        let exp = iat + ttl.as_secs().max(1) as i64;
        let claims = PeerClaims {
            iss: ISSUER.to_string(),
            aud: PEER_AUDIENCE.to_string(),
            sub: user_id.to_string(),
            name: username.to_string(),
            cnf: agent_key.to_base64url(),
            iat,
            exp,
            jti: jti.to_string(),
        };
        Ok(PeerToken {
            token: self.sign(&claims)?,
            expires_at_ms: exp * 1000,
        })
    }
}

/// A peer (data-path) token and when it expires.
#[derive(Debug, Clone)]
pub struct PeerToken {
    /// The compact JWT.
    pub token: String,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Checks the `agent_public_key` a peer token is requested for: an
/// Ed25519 public key, 32 bytes in base64url without padding, that is a
/// point on the curve and not of small order. A key no agent could sign
/// with would only make a token that opens nothing, so it is refused here
/// with a message the caller can act on.
pub fn parse_agent_key(agent_public_key: &str) -> Result<PublicKey, String> {
    const WANT: &str = "the agent's Ed25519 public key, 32 bytes, base64url without padding";
    if agent_public_key.is_empty() {
        return Err(format!("agent_public_key is required: send {WANT}"));
    }
    let key = PublicKey::from_base64url("agent_public_key", agent_public_key)
        .map_err(|e| format!("agent_public_key must be {WANT} ({e})"))?;
    let bytes: [u8; 32] = key
        .bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("agent_public_key must be {WANT}"))?;
    match VerifyingKey::from_bytes(&bytes) {
        Ok(point) if !point.is_weak() => Ok(key),
        _ => Err(format!(
            "agent_public_key is 32 bytes but not a usable Ed25519 public key; send {WANT}"
        )),
    }
}

/// A new opaque refresh token: 32 random bytes, base64url.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database stores for a refresh token: hex BLAKE3 of its text.
/// Refresh tokens are 256 random bits, so a fast hash is enough; a slow
/// one would only slow every refresh.
pub fn refresh_token_hash(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_services::auth::{AgentKey, PEER_PROOF_TTL, TokenError, TokenVerifier};

    #[tokio::test]
    async fn issued_tokens_verify_with_the_published_key() {
        let key = KeyPair::generate();
        let verifier = TokenVerifier::with_keys([key.public()]);
        let signer = Signer::new(key).unwrap();
        let now = p2p_services::time::now_ms();
        let token = signer
            .issue(
                "u1",
                "alice",
                Role::User,
                "j1",
                now,
                Duration::from_secs(60),
            )
            .unwrap();
        let claims = verifier.verify(&token.token).await.unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.name, "alice");
        assert_eq!(claims.jti, "j1");
        assert_eq!(token.jti, "j1");
    }

    #[tokio::test]
    async fn peer_tokens_verify_only_with_a_proof_from_their_agent_key() {
        let key = KeyPair::generate();
        let verifier = TokenVerifier::with_keys([key.public()]);
        let signer = Signer::new(key).unwrap();
        let agent = AgentKey::generate();
        let cnf = parse_agent_key(&agent.public_base64url()).unwrap();
        let now = p2p_services::time::now_ms();
        let ttl = Duration::from_secs(900);
        let peer = signer
            .issue_peer("u1", "alice", &cnf, "j2", now, ttl)
            .unwrap();
        assert_eq!(peer.expires_at_ms, (now / 1000 + 900) * 1000);

        let proof = agent.prove("peer-a", now / 1000, PEER_PROOF_TTL);
        let claims = verifier
            .verify_peer(&peer.token, Some(&proof), Some("peer-a"))
            .await
            .unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.name, "alice");
        assert_eq!(claims.cnf, agent.public_base64url());
        assert_eq!(claims.jti, "j2");
        assert!(matches!(
            verifier
                .verify_peer(&peer.token, Some(&proof), Some("peer-b"))
                .await,
            Err(TokenError::WrongPeer)
        ));
        // Checked again, the same pair comes from the verifier's memory of
        // verified pairs; one byte off and it is checked in full.
        assert!(
            verifier
                .verify_peer(&peer.token, Some(&proof), Some("peer-a"))
                .await
                .is_ok()
        );
        let mut tampered = proof.clone();
        let last = if tampered.ends_with('A') { "B" } else { "A" };
        tampered.replace_range(tampered.len() - 1.., last);
        assert!(matches!(
            verifier
                .verify_peer(&peer.token, Some(&tampered), Some("peer-a"))
                .await,
            Err(TokenError::Invalid(_))
        ));
        let forged = AgentKey::generate().prove("peer-a", now / 1000, PEER_PROOF_TTL);
        assert!(matches!(
            verifier
                .verify_peer(&peer.token, Some(&forged), Some("peer-a"))
                .await,
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verifier
                .verify_peer(&peer.token, None, Some("peer-a"))
                .await,
            Err(TokenError::MissingProof)
        ));
        assert!(matches!(
            verifier.verify(&peer.token).await,
            Err(TokenError::WrongCredential { .. })
        ));
    }

    #[test]
    fn agent_keys_are_32_byte_ed25519_points_in_base64url() {
        let agent = AgentKey::generate();
        let key = parse_agent_key(&agent.public_base64url()).unwrap();
        assert_eq!(key.to_base64url(), agent.public_base64url());

        let empty = parse_agent_key("").unwrap_err();
        assert!(empty.contains("agent_public_key is required"), "{empty}");
        let short = parse_agent_key(&URL_SAFE_NO_PAD.encode([7u8; 31])).unwrap_err();
        assert!(short.contains("expected 32 bytes, got 31"), "{short}");
        let long = parse_agent_key(&URL_SAFE_NO_PAD.encode([7u8; 33])).unwrap_err();
        assert!(long.contains("expected 32 bytes, got 33"), "{long}");
        let standard = parse_agent_key(&"+/".repeat(21)).unwrap_err();
        assert!(standard.contains("bad base64url"), "{standard}");
        // The identity point decodes but is of small order: nobody can
        // prove with it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = parse_agent_key(&URL_SAFE_NO_PAD.encode(identity)).unwrap_err();
        assert!(weak.contains("not a usable Ed25519"), "{weak}");
    }

    #[test]
    fn keys_survive_a_der_round_trip() {
        let key = KeyPair::generate();
        let der = key.to_der().unwrap();
        let back = KeyPair::from_der(&key.kid, &der).unwrap();
        assert_eq!(back.public().bytes, key.public().bytes);
        assert!(KeyPair::from_der("0000000000000000", &der).is_err());
        assert!(KeyPair::from_der(&key.kid, b"junk").is_err());
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, new_refresh_token());
        assert_eq!(refresh_token_hash(&a).len(), 64);
        assert_ne!(refresh_token_hash(&a), a);
    }
}
