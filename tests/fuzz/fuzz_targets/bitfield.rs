//! Fuzzes `Bitfield::from_bytes`, which parses the held-chunk bitfields
//! peers announce. Accepted fields must round-trip, never report more
//! chunks held than exist, and answer "not held" past the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_fuzz::BitfieldInput;
use p2p_services::manifest::Bitfield;

fuzz_target!(|data: &[u8]| {
    let input = BitfieldInput::parse(data);
    let Ok(field) = Bitfield::from_bytes(input.bytes, input.len) else {
        return;
    };
    assert_eq!(field.len(), input.len);
    assert_eq!(field.as_bytes(), input.bytes, "bytes do not round-trip");
    assert_eq!(
        Bitfield::from_bytes(field.as_bytes(), field.len()).as_ref(),
        Ok(&field)
    );
    let count = field.count();
    assert!(
        count <= field.len(),
        "{count} held of {} chunks",
        field.len()
    );
    assert_eq!(
        field.held().count() as u32,
        count,
        "held() disagrees with count()"
    );
    assert_eq!(field.missing().count() as u32, field.len() - count);
    assert_eq!(field.is_complete(), count == field.len());
    for index in [
        field.len(),
        field.len().saturating_add(1),
        field.len().saturating_add(7),
        u32::MAX,
    ] {
        if index >= field.len() {
            assert!(
                !field.get(index),
                "chunk {index} past the end reads as held"
            );
        }
    }
    let mut copy = field.clone();
    copy.set(field.len());
    copy.set(u32::MAX);
    assert_eq!(copy, field, "setting past the end changed the field");
    assert_eq!(field.intersects(&Bitfield::full(field.len())), count > 0);
    assert!(!field.intersects(&Bitfield::empty(field.len())));
});
