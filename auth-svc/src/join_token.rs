//! Join tokens: an admin's credential for an unattended machine. A token is
//! bound to one account and is good for a limited number of agent
//! certificates (one per use) until it expires or is revoked; it can do
//! nothing else. Its secret is shown once, when it is made, and only its
//! hash is stored.
//!
//! Pure rules here (secret format, limits, the hash); the SQL is in
//! [`crate::store`] and the decisions in [`crate::authority`].

use std::time::Duration;

use crate::tokens;

/// What every join token secret starts with, so one pasted in the wrong
/// place is recognisable.
pub const SECRET_PREFIX: &str = "p2pjt_";
/// Base64url characters after [`SECRET_PREFIX`]: 32 random bytes.
pub const SECRET_CHARS: usize = 43;
/// Most uses (certificates) one token may be made for.
pub const MAX_USES: u32 = 1000;
/// Longest a token may stay good.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;

/// A join token as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// Public id, for listing and revoking; not the secret.
    pub id: String,
    /// The account machines joined with it belong to.
    pub user_id: String,
    /// That account's username.
    pub username: String,
    /// Uses it was made for.
    pub uses: u32,
    /// Uses not spent yet.
    pub uses_left: u32,
    /// When it stops working, Unix milliseconds.
    pub expires_at_ms: i64,
    /// Revoked by an admin.
    pub revoked: bool,
    /// The admin's note, e.g. "lab printers".
    pub description: String,
    /// The username of the admin who made it.
    pub created_by: String,
    /// When it was made, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A new secret: [`SECRET_PREFIX`] and 32 random bytes as base64url.
pub fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", tokens::new_refresh_token())
}

/// A new public id: 16 hex digits, short enough to type in
/// `p2p join-tokens revoke ID`.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// What the database stores for a secret: the same BLAKE3 hash as for
/// refresh tokens (a secret is 256 random bits, so a fast hash is enough).
pub fn secret_hash(secret: &str) -> String {
    tokens::refresh_token_hash(secret)
}

/// Whether `text` has the shape of a secret (prefix and 43 base64url
/// characters). Anything else is refused before the database is asked.
pub fn looks_like_secret(text: &str) -> bool {
    text.trim().strip_prefix(SECRET_PREFIX).is_some_and(|rest| {
        rest.len() == SECRET_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Checks what an admin asked for: 1..=[`MAX_USES`] uses, a lifetime above
/// zero and at most [`MAX_TTL`], a description of at most
/// [`MAX_DESCRIPTION_CHARS`] characters without control characters. The
/// error says what is wrong in words an admin can act on.
pub fn check_limits(uses: u32, ttl: Duration, description: &str) -> Result<(), String> {
    if uses == 0 || uses > MAX_USES {
        return Err(format!(
            "uses is {uses}; a join token is good for 1 to {MAX_USES} machines"
        ));
    }
    if ttl.is_zero() {
        return Err("the lifetime is zero; give one of at most 30 days".into());
    }
    if ttl > MAX_TTL {
        return Err(format!(
            "the lifetime is {} days; the limit is {} days",
            ttl.as_secs() / 86_400,
            MAX_TTL.as_secs() / 86_400
        ));
    }
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "the description is {chars} characters long; the limit is {MAX_DESCRIPTION_CHARS}"
        ));
    }
    if description.chars().any(char::is_control) {
        return Err(
            "the description has control characters (such as a newline); \
                    use one line of plain text"
                .into(),
        );
    }
    Ok(())
}

/// The record as the wire shows it (`p2p.auth.v1.JoinToken`), for the
/// EnrollmentService handlers: the one conversion, kept beside the record
/// so both ends of a field change are in one file. It has no secret to
/// leak.
pub fn to_proto(record: &JoinTokenRecord) -> p2p_proto::auth::v1::JoinToken {
    p2p_proto::auth::v1::JoinToken {
        id: record.id.clone(),
        username: record.username.clone(),
        uses_left: record.uses_left,
        uses: record.uses,
        expires_at_ms: record.expires_at_ms,
        revoked: record.revoked,
        description: record.description.clone(),
        created_by: record.created_by.clone(),
        created_at_ms: record.created_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_shape_and_differ() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("p2pjt_"));
        assert_eq!(a.len(), SECRET_PREFIX.len() + SECRET_CHARS);
        assert!(looks_like_secret(&a));
        assert!(looks_like_secret(&format!("  {a}\n")));
        assert_eq!(secret_hash(&a).len(), 64);
        assert_ne!(secret_hash(&a), secret_hash(&b));
    }

    #[test]
    fn other_text_is_not_a_secret() {
        let good = new_secret();
        assert!(!looks_like_secret(""));
        assert!(!looks_like_secret(&good[SECRET_PREFIX.len()..]));
        assert!(!looks_like_secret(&format!("{good}A")));
        assert!(!looks_like_secret(&good.replace("p2pjt_", "p2pxx_")));
        assert!(!looks_like_secret(&format!(
            "{SECRET_PREFIX}{}",
            "+".repeat(SECRET_CHARS)
        )));
    }

    #[test]
    fn ids_are_short_hex() {
        let id = new_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn limits_refuse_what_an_admin_should_not_make() {
        let day = Duration::from_secs(86_400);
        assert!(check_limits(1, day, "").is_ok());
        assert!(check_limits(MAX_USES, MAX_TTL, &"x".repeat(200)).is_ok());
        assert!(check_limits(0, day, "").unwrap_err().contains("1 to 1000"));
        assert!(check_limits(1001, day, "").is_err());
        assert!(check_limits(1, Duration::ZERO, "").is_err());
        assert!(check_limits(1, MAX_TTL + Duration::from_secs(1), "").is_err());
        assert!(check_limits(1, day, &"é".repeat(201)).is_err());
        assert!(check_limits(1, day, "two\nlines").is_err());
        assert!(check_limits(1, day, "bell\u{7}").is_err());
    }

    #[test]
    fn the_wire_form_carries_every_field() {
        let record = JoinTokenRecord {
            id: "i".into(),
            user_id: "u".into(),
            username: "printer".into(),
            uses: 5,
            uses_left: 4,
            expires_at_ms: 9,
            revoked: true,
            description: "lab".into(),
            created_by: "admin".into(),
            created_at_ms: 3,
        };
        let pb = to_proto(&record);
        assert_eq!(
            (pb.id.as_str(), pb.username.as_str(), pb.uses, pb.uses_left),
            ("i", "printer", 5, 4)
        );
        assert!(pb.revoked);
        assert_eq!((pb.expires_at_ms, pb.created_at_ms), (9, 3));
        assert_eq!(
            (pb.description.as_str(), pb.created_by.as_str()),
            ("lab", "admin")
        );
    }
}
