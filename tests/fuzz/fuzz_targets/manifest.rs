//! Fuzzes manifest validation: arbitrary bytes decoded as the
//! `p2p.index.v1.Manifest` message (as index-svc and agents receive it)
//! and validated by `wire::from_proto`. Whatever is accepted must describe
//! a consistent file: the chunk geometry adds up, every chunk length is in
//! bounds, and the manifest survives a round trip through the wire form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_proto::index::v1 as pb;
use p2p_services::manifest::{
    FileId, MAX_CHUNKS, MAX_FILE_BYTES, chunk_count, valid_chunk_size, validate_name, wire,
};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::Manifest::decode(data) else {
        return;
    };
    check_file_id(&message.file_id);
    let Ok(manifest) = wire::from_proto(message) else {
        return;
    };

    assert!(validate_name(&manifest.name).is_ok(), "accepted a bad name");
    assert!(valid_chunk_size(manifest.chunk_size_bytes));
    assert!(manifest.size_bytes <= MAX_FILE_BYTES);
    let count = manifest.chunk_count();
    assert_eq!(
        u64::from(count),
        chunk_count(manifest.size_bytes, manifest.chunk_size_bytes),
        "chunk count does not match size and chunk size"
    );
    assert!(u64::from(count) <= MAX_CHUNKS);
    assert!(!manifest.mime_type.is_empty() && manifest.mime_type.contains('/'));

    let mut covered = 0u64;
    for index in 0..count {
        let len = manifest
            .chunk_len(index)
            .expect("chunk inside the file has a length");
        assert!(
            len > 0 && len <= manifest.chunk_size_bytes,
            "chunk {index} is {len} bytes"
        );
        assert_eq!(
            manifest.chunk_offset(index),
            covered,
            "chunk {index} is not contiguous"
        );
        assert!(
            index + 1 == count || len == manifest.chunk_size_bytes,
            "short chunk before the end"
        );
        covered += u64::from(len);
        assert!(
            !manifest.chunk_matches(index, &[]),
            "an empty slice matched chunk {index}"
        );
    }
    assert_eq!(
        covered, manifest.size_bytes,
        "chunks do not cover the file exactly"
    );
    assert_eq!(manifest.chunk_len(count), None);
    assert_eq!(manifest.chunk_len(u32::MAX), None);
    assert!(!manifest.chunk_matches(count, &[]));

    let id = manifest.file_id();
    assert_eq!(
        FileId::parse(id.as_str()).as_ref(),
        Ok(&id),
        "derived id does not parse"
    );
    let proto = wire::to_proto(&manifest);
    assert_eq!(proto.file_id, id.as_str());
    let bytes = proto.encode_to_vec();
    let decoded = pb::Manifest::decode(bytes.as_slice()).expect("own encoding decodes");
    let again = wire::from_proto(decoded).expect("own encoding validates");
    assert_eq!(again, manifest, "manifest changed in a wire round trip");
});

/// Whatever the sender put in `file_id`, parsing it never panics and
/// anything accepted is a canonical 64-character lowercase hex id.
fn check_file_id(text: &str) {
    if let Ok(id) = FileId::parse(text) {
        assert_eq!(id.as_str().len(), 64);
        assert!(
            id.as_str()
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(id.short().len(), 12);
        assert_eq!(FileId::parse(id.as_str()).as_ref(), Ok(&id));
    }
}
