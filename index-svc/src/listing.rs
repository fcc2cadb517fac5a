//! Paging, sorting and filtering of the file list: the orders a listing
//! can take, the opaque page token (a keyset cursor that names its order,
//! so pages stay stable while files are added) and the escaped
//! `LIKE` pattern for the case-insensitive name filter, and the one
//! case folding both sides of that comparison use.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p2p_services::manifest::EntryKind;

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the client asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Longest name filter accepted.
pub const MAX_FILTER_BYTES: usize = 255;

/// What a listing is ordered by. Ties are broken by file id in the same
/// direction, so every order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The folded name ([`fold_name`]): case does not matter.
    Name,
    /// Size in bytes.
    Size,
    /// When first published.
    Added,
    /// Holders the index recorded (`files.holder_count`).
    Holders,
}

impl SortKey {
    fn code(self) -> char {
        match self {
            Self::Name => 'n',
            Self::Size => 's',
            Self::Added => 'a',
            Self::Holders => 'h',
        }
    }

    fn from_code(code: char) -> Option<Self> {
        Some(match code {
            'n' => Self::Name,
            's' => Self::Size,
            'a' => Self::Added,
            'h' => Self::Holders,
            _ => return None,
        })
    }

    /// How people call this order, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Size => "size",
            Self::Added => "date added",
            Self::Holders => "holders",
        }
    }
}

/// A sort key and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// What is compared.
    pub key: SortKey,
    /// Largest first.
    pub descending: bool,
}

impl Order {
    /// Newest first: the order of an unspecified sort (and of every
    /// listing before sorts existed).
    pub const NEWEST_FIRST: Self = Self {
        key: SortKey::Added,
        descending: true,
    };

    /// How people call this order, for messages.
    pub fn label(self) -> String {
        let direction = if self.descending {
            "descending"
        } else {
            "ascending"
        };
        format!("{} {direction}", self.key.label())
    }
}

/// The sort key's value of the last file on a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// For [`SortKey::Name`].
    Text(String),
    /// For every other key.
    Number(i64),
}

/// Where the next page starts: strictly after this key in `order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    /// The order the token was issued for.
    pub order: Order,
    /// The sort key of the last file on the previous page.
    pub value: KeyValue,
    /// File id of the last file on the previous page.
    pub file_id: String,
}

/// Why a page token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token this index issued.
    Garbled,
    /// Issued for another order than the request asks for.
    OtherOrder {
        /// The order it was issued for.
        issued_for: Order,
    },
}

impl PageCursor {
    /// The opaque token handed to clients.
    pub fn encode(&self) -> String {
        let direction = if self.order.descending { 'd' } else { 'a' };
        let value = match &self.value {
            KeyValue::Text(text) => text.clone(),
            KeyValue::Number(n) => n.to_string(),
        };
        URL_SAFE_NO_PAD.encode(format!(
            "v2:{}{direction}:{}:{value}",
            self.order.key.code(),
            self.file_id
        ))
    }

    /// Parses a token from [`PageCursor::encode`] (or from an index before
    /// sorts existed, which listed newest first) meant for `order`.
    pub fn decode(token: &str, order: Order) -> Result<Self, TokenError> {
        let cursor = Self::parse(token).ok_or(TokenError::Garbled)?;
        if cursor.order != order {
            return Err(TokenError::OtherOrder {
                issued_for: cursor.order,
            });
        }
        Ok(cursor)
    }

    fn parse(token: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let valid_id = |id: &str| {
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if let Some(rest) = text.strip_prefix("v1:") {
            let (ms, id) = rest.split_once(':')?;
            if !valid_id(id) {
                return None;
            }
            return Some(Self {
                order: Order::NEWEST_FIRST,
                value: KeyValue::Number(ms.parse().ok()?),
                file_id: id.to_string(),
            });
        }
        let rest = text.strip_prefix("v2:")?;
        let (order, rest) = rest.split_once(':')?;
        let (id, value) = rest.split_once(':')?;
        let mut codes = order.chars();
        let key = SortKey::from_code(codes.next()?)?;
        let descending = match (codes.next()?, codes.next()) {
            ('d', None) => true,
            ('a', None) => false,
            _ => return None,
        };
        if !valid_id(id) {
            return None;
        }
        let value = match key {
            SortKey::Name => KeyValue::Text(value.to_string()),
            _ => KeyValue::Number(value.parse().ok()?),
        };
        Some(Self {
            order: Order { key, descending },
            value,
            file_id: id.to_string(),
        })
    }
}

/// Which files a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Folded substring of the name ([`fold_name`]); empty: any name.
    pub name_contains: String,
    /// Exact username of the publisher.
    pub owner_name: Option<String>,
    /// Only this kind of entry.
    pub kind: Option<EntryKind>,
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

/// A name as compared by the filter and the name sort: the index stores
/// it beside each name (`files.name_folded`) and folds the filter the same
/// way, so matching never depends on the database's own `LOWER`, which
/// folds ASCII only on SQLite and follows the database locale on
/// PostgreSQL.
pub use p2p_services::manifest::fold_name;

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
        let newest = Order::NEWEST_FIRST;
        let cursor = PageCursor {
            order: newest,
            value: KeyValue::Number(1_700_000_000_000),
            file_id: "ab".repeat(32),
        };
        assert_eq!(PageCursor::decode(&cursor.encode(), newest), Ok(cursor));
        let by_name = Order {
            key: SortKey::Name,
            descending: false,
        };
        let named = PageCursor {
            order: by_name,
            value: KeyValue::Text("a:b ünï".into()),
            file_id: "cd".repeat(32),
        };
        assert_eq!(
            PageCursor::decode(&named.encode(), by_name),
            Ok(named.clone())
        );
        assert_eq!(
            PageCursor::decode(&named.encode(), newest),
            Err(TokenError::OtherOrder {
                issued_for: by_name
            })
        );
        let old = URL_SAFE_NO_PAD.encode(format!("v1:5:{}", "ef".repeat(32)));
        assert_eq!(
            PageCursor::decode(&old, newest).map(|c| c.value),
            Ok(KeyValue::Number(5))
        );
        for garbage in [
            "not a token",
            "v1:x:ab",
            "v1:1:'; DROP",
            "v2:zz:ab:1",
            "v2:sd:ab:x",
        ] {
            let token = URL_SAFE_NO_PAD.encode(garbage);
            assert_eq!(
                PageCursor::decode(&token, newest),
                Err(TokenError::Garbled),
                "{garbage}"
            );
        }
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
