//! What an account is and the rules its fields obey: username syntax,
//! password strength. Pure functions, so the rules are tested without a
//! server; handlers and start-up both call them.

use p2p_services::auth::Role;

/// Longest username accepted.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Longest password accepted: Argon2 is slow on purpose, and an unbounded
/// input would let anyone make it slower.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// An account as stored, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Stable id, the `sub` claim.
    pub id: String,
    /// Unique login name.
    pub username: String,
    /// What the account may do.
    pub role: Role,
    /// A disabled account cannot log in or refresh.
    pub disabled: bool,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

/// Checks a username: 1-64 characters of letters, digits, `.`, `_`, `-`.
/// The error says what is wrong in words a user can act on.
pub fn validate_username(username: &str) -> Result<(), String> {
    if username.is_empty() {
        return Err("username is empty".into());
    }
    let chars = username.chars().count();
    if chars > MAX_USERNAME_CHARS {
        return Err(format!(
            "username is {chars} characters long; the limit is {MAX_USERNAME_CHARS}"
        ));
    }
    if let Some(bad) = username
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let shown = if bad.is_control() {
            format!("control character {:?}", bad)
        } else {
            format!("{bad:?}")
        };
        return Err(format!(
            "username contains {shown}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a new password against the configured minimum length (in
/// characters) and the hashing limit.
pub fn validate_password(password: &str, min_chars: usize) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < min_chars {
        return Err(format!(
            "password is too short: it needs at least {min_chars} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "password is too long: at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_usernames_are_accepted() {
        for name in ["admin", "alice.smith", "bob_2", "c-d", "A", &"x".repeat(64)] {
            assert_eq!(validate_username(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_usernames_are_rejected_with_a_reason() {
        assert!(validate_username("").unwrap_err().contains("empty"));
        assert!(
            validate_username(&"x".repeat(65))
                .unwrap_err()
                .contains("limit is 64")
        );
        assert!(
            validate_username("bell\u{7}")
                .unwrap_err()
                .contains("control character")
        );
        assert!(validate_username("a b").unwrap_err().contains("' '"));
        assert!(validate_username("ünï").is_err());
        assert!(validate_username("x/y").is_err());
    }

    #[test]
    fn short_passwords_name_the_minimum() {
        let err = validate_password("short", 8).unwrap_err();
        assert!(err.contains("at least 8"), "{err}");
        assert_eq!(validate_password("long enough", 8), Ok(()));
        assert!(validate_password(&"p".repeat(2000), 8).is_err());
    }
}
