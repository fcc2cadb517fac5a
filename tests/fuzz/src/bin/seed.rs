//! Writes the seed corpora under `corpus/<target>/`: valid inputs in each
//! target's layout (a real manifest encoding, bitfields, genuine tokens
//! signed with the fuzz key, names) plus the near misses the unit tests
//! name. Run it from `tests/fuzz` when a layout changes:
//! `cargo run --bin seed`. Existing files with the same name are replaced;
//! files libFuzzer added are left alone.

use std::path::Path;

use p2p_fuzz::{BitfieldInput, RangesInput, TokenInput, genuine_claims_json, genuine_token};
use p2p_proto::index::v1 as pb;
use p2p_services::manifest::{Bitfield, Manifest, wire};
use prost::Message;
use serde_json::json;

/// `(start, count)` pairs of one FetchChunksRequest.
type Ranges<'a> = &'a [(u32, u32)];

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)
    };

    for (name, manifest) in manifests() {
        write("manifest", name, &manifest.encode_to_vec())?;
    }

    let mut some = Bitfield::empty(10);
    some.set(0);
    some.set(9);
    let bitfields: [(&str, Vec<u8>); 6] = [
        ("ten-two-held", BitfieldInput::encode(10, some.as_bytes())),
        (
            "full-17",
            BitfieldInput::encode(17, Bitfield::full(17).as_bytes()),
        ),
        ("empty-0", BitfieldInput::encode(0, &[])),
        ("past-end", BitfieldInput::encode(10, &[0x80, 0x20])),
        ("short", BitfieldInput::encode(10, &[0x80])),
        ("derived-len-3-spare", vec![3, 0xff, 0xf8]),
    ];
    for (name, bytes) in bitfields {
        write("bitfield", name, &bytes)?;
    }

    let names: &[(&str, &str)] = &[
        ("plain", "report.pdf"),
        ("accents", "résumé 2026.txt"),
        ("cjk", "日本語のファイル.txt"),
        ("hidden", ".profile"),
        ("dotdot", ".."),
        ("dot", "."),
        ("slash", "a/b"),
        ("backslash", "a\\b"),
        ("bell", "x\u{7}y"),
        ("nul", "x\0y"),
        ("blank", "   "),
        ("max", &"n".repeat(255)),
        ("too-long", &"n".repeat(256)),
    ];
    for (name, text) in names {
        write("names", name, text.as_bytes())?;
    }

    let ranges: [(&str, u32, Ranges<'_>); 5] = [
        ("in-order", 10, &[(5, 2), (1, 1)]),
        ("cap", 5000, &[(0, 1024)]),
        ("over-cap", 5000, &[(0, 1025)]),
        ("past-end", 10, &[(8, 3)]),
        ("overflow", 10, &[(u32::MAX, 2)]),
    ];
    for (name, count, r) in ranges {
        write("chunk_ranges", name, &RangesInput::encode(count, r))?;
    }
    write(
        "chunk_ranges",
        "small-fields",
        &[1, 100, 0, 3, 0, 4, 0, 90, 0, 10, 0],
    )?;

    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": p2p_fuzz::FUZZ_KID}).to_string();
    let none_header = json!({"alg": "none", "kid": p2p_fuzz::FUZZ_KID}).to_string();
    let token = genuine_token();
    let (unsigned, _) = token.rsplit_once('.').unwrap_or((&token, ""));
    let tokens: [(&str, Vec<u8>); 7] = [
        ("genuine", TokenInput::encode_raw(&token)),
        (
            "genuine-unsigned",
            TokenInput::encode_raw(&format!("{unsigned}.")),
        ),
        (
            "json-genuine",
            TokenInput::encode_json(0, &header, &genuine_claims_json()),
        ),
        (
            "json-other-key",
            TokenInput::encode_json(1, &header, &genuine_claims_json()),
        ),
        (
            "json-alg-none",
            TokenInput::encode_json(2, &none_header, &genuine_claims_json()),
        ),
        ("crafted-zeros", [vec![1], vec![0; 96]].concat()),
        ("crafted-mixed", [vec![1], (0u8..=255).collect()].concat()),
    ];
    for (name, bytes) in tokens {
        write("token", name, &bytes)?;
    }
    check_genuine_token_verifies(&token);
    Ok(())
}

/// The genuine seed must pass the verifier the `token` target uses, or the
/// target's acceptance checks would never run.
fn check_genuine_token_verifies(token: &str) {
    let verifier = p2p_services::auth::TokenVerifier::with_keys([p2p_fuzz::fuzz_public_key()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime");
    if let Err(err) = runtime.block_on(verifier.verify(token)) {
        panic!("the genuine seed token is refused: {err}");
    }
}

/// Valid manifests of a few shapes, plus one refused for its name.
fn manifests() -> Vec<(&'static str, pb::Manifest)> {
    let make = |size: u64, chunk: u32, mime: &str, name: &str| {
        let count = size.div_ceil(u64::from(chunk));
        let hashes: Vec<u8> = (0..count)
            .flat_map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        Manifest::from_parts(
            name.into(),
            size,
            mime.into(),
            chunk,
            &hashes,
            blake3::hash(name.as_bytes()).as_bytes(),
        )
        .map(|m| wire::to_proto(&m))
    };
    let mut out = Vec::new();
    for (label, size, chunk, mime) in [
        ("empty-file", 0, 65_536, ""),
        ("one-byte", 1, 65_536, "text/plain"),
        ("four-chunks-short-last", 200_000, 65_536, "application/pdf"),
        (
            "exact-multiple",
            1 << 20,
            262_144,
            "application/octet-stream",
        ),
        ("max-chunk", 100 << 20, 64 << 20, "video/mp4"),
    ] {
        if let Ok(m) = make(size, chunk, mime, "data.bin") {
            out.push((label, m));
        }
    }
    if let Some((_, valid)) = out.get(2).cloned() {
        let mut bad_name = valid.clone();
        bad_name.name = "../escape".into();
        out.push(("bad-name", bad_name));
        let mut bad_size = valid.clone();
        bad_size.chunk_size_bytes = 1000;
        out.push(("bad-chunk-size", bad_size));
    }
    out
}
