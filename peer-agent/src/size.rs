//! Byte counts as people read them ("64.0 MiB"): the one format the
//! agent's messages ([`crate::error`]) and the web app use. A leaf: it
//! depends on nothing in the crate.

/// `bytes` for people, in binary units with one decimal ("64.0 MiB").
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(24_222_000), "23.1 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
