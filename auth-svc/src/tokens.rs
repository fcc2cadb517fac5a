//! Token material: Ed25519 signing keys (kept in the database as PKCS#8
//! DER so a restart keeps everyone's sessions), signing access tokens with
//! the shared [`Claims`] and peer tokens with [`PeerClaims`], and opaque
//! refresh tokens that are only ever stored as a BLAKE3 hash.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p2p_services::auth::{
    AUDIENCE, Claims, ISSUER, PEER_AUDIENCE, PEER_TOKEN_TTL, PeerClaims, PublicKey, Role,
};
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
    /// fetch chunks from the source `peer_id`, for [`PEER_TOKEN_TTL`] from
    /// `now_ms`.
    pub fn issue_peer(
        &self,
        user_id: &str,
        username: &str,
        peer_id: &str,
        jti: &str,
        now_ms: i64,
    ) -> Result<PeerToken, Error> {
        let iat = now_ms / 1000;
        let exp = iat + PEER_TOKEN_TTL.as_secs() as i64;
        let claims = PeerClaims {
            iss: ISSUER.to_string(),
            aud: PEER_AUDIENCE.to_string(),
            sub: user_id.to_string(),
            name: username.to_string(),
            peer: peer_id.to_string(),
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

/// Longest source peer id a peer token may name.
pub const MAX_PEER_ID_CHARS: usize = 128;

/// Checks the peer id a peer token is requested for: 1-128 printable ASCII
/// characters. Spaces are refused too: the source compares the claim with
/// its own id byte for byte, so a padded id would only make a useless token.
pub fn validate_peer_id(peer_id: &str) -> Result<(), String> {
    if peer_id.is_empty() {
        return Err(
            "source_peer_id is required: name the source (its peer id from LocateSources)".into(),
        );
    }
    if peer_id.len() > MAX_PEER_ID_CHARS {
        return Err(format!(
            "source_peer_id is {} bytes long; the limit is {MAX_PEER_ID_CHARS}",
            peer_id.len()
        ));
    }
    if let Some(bad) = peer_id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "source_peer_id contains {bad:?}; a peer id is printable ASCII without spaces"
        ));
    }
    Ok(())
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
    use p2p_services::auth::{TokenError, TokenVerifier};

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
    async fn peer_tokens_verify_only_as_peer_tokens_for_their_peer() {
        let key = KeyPair::generate();
        let verifier = TokenVerifier::with_keys([key.public()]);
        let signer = Signer::new(key).unwrap();
        let now = p2p_services::time::now_ms();
        let peer = signer
            .issue_peer("u1", "alice", "peer-a", "j2", now)
            .unwrap();
        assert_eq!(
            peer.expires_at_ms,
            (now / 1000 + PEER_TOKEN_TTL.as_secs() as i64) * 1000
        );
        let claims = verifier
            .verify_peer(&peer.token, Some("peer-a"))
            .await
            .unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.name, "alice");
        assert_eq!(claims.peer, "peer-a");
        assert_eq!(claims.jti, "j2");
        assert!(matches!(
            verifier.verify_peer(&peer.token, Some("peer-b")).await,
            Err(TokenError::WrongPeer)
        ));
        assert!(matches!(
            verifier.verify(&peer.token).await,
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn peer_ids_are_short_printable_ascii() {
        assert!(validate_peer_id("6f1c2a9e-3b0d-4e57-9a43-0c1d2e3f4a5b").is_ok());
        assert!(validate_peer_id(&"p".repeat(MAX_PEER_ID_CHARS)).is_ok());
        let empty = validate_peer_id("").unwrap_err();
        assert!(empty.contains("required"), "{empty}");
        let long = validate_peer_id(&"p".repeat(MAX_PEER_ID_CHARS + 1)).unwrap_err();
        assert!(long.contains("limit is 128"), "{long}");
        for bad in ["has space", "bell\u{7}", "caf\u{e9}", "tab\t"] {
            let err = validate_peer_id(bad).unwrap_err();
            assert!(err.contains("printable ASCII"), "{bad:?}: {err}");
        }
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
