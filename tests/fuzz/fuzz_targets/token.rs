//! Fuzzes access-token verification with one trusted Ed25519 key: raw
//! strings, structured tokens with every header field and claim valid or
//! perturbed (including every spelling of `alg: none`), and raw JSON
//! signed or not. The verifier must never panic, never accept a token the
//! trusted key did not sign, and only return claims that name our issuer
//! and audience and have not expired; it must accept genuine tokens.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use p2p_fuzz::{Encoding, TokenInput, assemble_token, now_secs, payload_json, signed_by_fuzz_key};
use p2p_services::auth::{AUDIENCE, ISSUER, LEEWAY, TokenVerifier};

/// Built once: a current-thread runtime (with_keys never touches the
/// network, so no driver is needed) and the verifier under test.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime")
});
static VERIFIER: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::with_keys([p2p_fuzz::fuzz_public_key()]));

fuzz_target!(|data: &[u8]| {
    let now = now_secs();
    let (token, genuine) = match TokenInput::parse(data) {
        TokenInput::Raw(token) => (token, false),
        TokenInput::Crafted(crafted) => (crafted.build(now), crafted.is_genuine()),
        TokenInput::RawJson {
            header,
            payload,
            signing,
        } => (
            assemble_token(&header, &payload, signing, Encoding::UrlNoPad),
            false,
        ),
    };
    let result = RUNTIME.block_on(VERIFIER.verify(&token));
    match result {
        Ok(claims) => {
            assert!(
                signed_by_fuzz_key(&token),
                "accepted a token the key did not sign: {token}"
            );
            assert_eq!(claims.iss, ISSUER, "accepted a foreign issuer");
            assert_eq!(claims.aud, AUDIENCE, "accepted a foreign audience");
            assert!(
                claims.exp >= now - LEEWAY.as_secs() as i64,
                "accepted a token that expired at {}",
                claims.exp
            );
            let payload = payload_json(&token).expect("accepted payload is JSON");
            assert_eq!(
                payload["iss"], ISSUER,
                "verifier and plain JSON disagree on iss"
            );
            assert_eq!(
                payload["aud"], AUDIENCE,
                "verifier and plain JSON disagree on aud"
            );
            assert_eq!(payload["sub"], claims.sub.as_str());
        }
        Err(err) => assert!(!genuine, "refused a genuine token: {err}\n{token}"),
    }
});
