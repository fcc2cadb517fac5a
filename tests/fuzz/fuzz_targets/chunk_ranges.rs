//! Fuzzes `peer_agent::upload::requested_chunks`, which turns the ranges of
//! a FetchChunksRequest from any peer into chunk indexes. It must never
//! panic or overflow, never return more than its cap, never return an index
//! past the file, and return exactly the indexes asked for, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_fuzz::RangesInput;
use peer_agent::upload::{MAX_CHUNKS_PER_REQUEST, RangeError, requested_chunks};

fuzz_target!(|data: &[u8]| {
    let input = RangesInput::parse(data);
    let result = requested_chunks(&input.ranges, input.chunk_count);
    let expected = reference(&input.ranges, input.chunk_count);
    match (result, expected) {
        (Ok(indexes), Some(expected)) => {
            assert!(!indexes.is_empty());
            assert!(
                indexes.len() as u64 <= MAX_CHUNKS_PER_REQUEST,
                "{} indexes",
                indexes.len()
            );
            assert!(
                indexes.iter().all(|&i| i < input.chunk_count),
                "index past the end"
            );
            assert_eq!(
                indexes, expected,
                "indexes differ from the ranges asked for"
            );
        }
        (Ok(indexes), None) => panic!("accepted an invalid request: {} indexes", indexes.len()),
        (Err(err), Some(_)) => panic!("refused a valid request: {err}"),
        (Err(RangeError::TooMany(n)), None) => assert!(n > MAX_CHUNKS_PER_REQUEST),
        (Err(RangeError::PastEnd { end, chunk_count }), None) => {
            assert_eq!(chunk_count, input.chunk_count);
            assert!(end >= u64::from(chunk_count));
        }
        (Err(_), None) => {}
    }
});

/// The specification, in u64 arithmetic: `None` when the request must be
/// refused (nothing asked, over the cap, or past the end).
fn reference(ranges: &[(u32, u32)], chunk_count: u32) -> Option<Vec<u32>> {
    let total: u64 = ranges.iter().map(|&(_, n)| u64::from(n)).sum();
    if total == 0 || total > MAX_CHUNKS_PER_REQUEST {
        return None;
    }
    let mut out = Vec::new();
    for &(start, count) in ranges {
        if u64::from(start) + u64::from(count) > u64::from(chunk_count) {
            return None;
        }
        out.extend((0..count).map(|k| start + k));
    }
    Some(out)
}
