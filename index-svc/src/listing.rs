//! Paging and filtering of the file list: the opaque page token (a keyset
//! cursor, so pages stay stable while files are added) and the escaped
//! `LIKE` pattern for the case-insensitive name filter.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the client asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Longest name filter accepted.
pub const MAX_FILTER_BYTES: usize = 255;

/// Where the next page starts: files are listed newest first, ties broken
/// by file id, and a page continues strictly after this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    /// `added_at_ms` of the last file on the previous page.
    pub added_at_ms: i64,
    /// File id of the last file on the previous page.
    pub file_id: String,
}

impl PageCursor {
    /// The opaque token handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.added_at_ms, self.file_id))
    }

    /// Parses a token from [`PageCursor::encode`]; `None` for anything else.
    pub fn decode(token: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let rest = text.strip_prefix("v1:")?;
        let (ms, id) = rest.split_once(':')?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            added_at_ms: ms.parse().ok()?,
            file_id: id.to_string(),
        })
    }
}

/// The page size to use for a requested one, or `None` when it is over
/// [`MAX_PAGE_SIZE`].
pub fn page_size(requested: u32) -> Option<u32> {
    match requested {
        0 => Some(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Some(n),
        _ => None,
    }
}

/// The `LIKE` pattern (with `\` as escape character) matching names that
/// contain `needle`, ignoring case. `%`, `_` and `\` in the needle match
/// themselves.
pub fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_token_round_trips_and_rejects_garbage() {
        let cursor = PageCursor {
            added_at_ms: 1_700_000_000_000,
            file_id: "ab".repeat(32),
        };
        assert_eq!(PageCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(PageCursor::decode("not a token"), None);
        assert_eq!(PageCursor::decode(&URL_SAFE_NO_PAD.encode("v1:x:ab")), None);
        assert_eq!(
            PageCursor::decode(&URL_SAFE_NO_PAD.encode("v1:1:'; DROP")),
            None
        );
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0), Some(100));
        assert_eq!(page_size(1000), Some(1000));
        assert_eq!(page_size(1001), None);
    }

    #[test]
    fn filter_wildcards_match_literally() {
        assert_eq!(contains_pattern("Report"), "%report%");
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
