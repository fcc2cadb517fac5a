//! Fuzzes `validate_name`, the check on display names that become file
//! names on every downloader's disk. An accepted name must be one plain
//! path component: no separators, no `..`, no control characters, 1 to 255
//! bytes.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use p2p_services::manifest::{MAX_NAME_BYTES, validate_name};

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
});

fn check(name: &str) {
    if validate_name(name).is_err() {
        return;
    }
    assert!(
        !name.is_empty() && name.len() <= MAX_NAME_BYTES,
        "accepted {} bytes",
        name.len()
    );
    assert!(
        !name.contains('/') && !name.contains('\\'),
        "accepted a separator: {name:?}"
    );
    assert!(!name.contains(".."), "accepted \"..\": {name:?}");
    assert!(
        !name.chars().any(char::is_control),
        "accepted a control character: {name:?}"
    );
    let components: Vec<Component<'_>> = Path::new(name).components().collect();
    assert!(
        matches!(components.as_slice(), [Component::Normal(c)] if *c == std::ffi::OsStr::new(name)),
        "{name:?} is not one plain path component: {components:?}"
    );
}
