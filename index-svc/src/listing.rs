//! Paging and filtering of the file list: the opaque page token (a keyset
//! cursor, so pages stay stable while files are added) and the escaped
//! `LIKE` pattern for the case-insensitive name filter, and the one
//! case folding both sides of that comparison use.

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

/// A name as compared by the filter: every character lowercased with
/// Unicode rules, one at a time. The index stores it beside each name
/// (`files.name_folded`) and folds the filter the same way, so matching
/// never depends on the database's own `LOWER`, which folds ASCII only on
/// SQLite and follows the database locale on PostgreSQL. Per character,
/// so a folded part of a name is a part of the folded name (the
/// whole-string rule would turn a final `Σ` into `ς` in one and `σ` in the
/// other).
pub fn fold_name(name: &str) -> String {
    name.chars().flat_map(char::to_lowercase).collect()
}

/// The `LIKE` pattern (with `\` as escape character) matching folded
/// names ([`fold_name`]) that contain `needle`, ignoring case. `%`, `_`
/// and `\` in the needle match themselves.
pub fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in fold_name(needle).chars() {
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

    #[test]
    fn names_fold_beyond_ascii() {
        assert_eq!(fold_name("Отчёт 2026.pdf"), "отчёт 2026.pdf");
        assert_eq!(fold_name("École Ärger"), "école ärger");
        assert_eq!(fold_name("ΟΔΟΣ"), "οδοσ");
        assert_eq!(contains_pattern("ΟΔΟΣ"), "%οδοσ%");
        assert!(fold_name("ΦΩΤΟ ΟΔΟΣ.jpg").contains(&fold_name("ΟΔΟΣ")));
    }
}
