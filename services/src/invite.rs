//! Invites: the one string an admin hands to a new machine. It names
//! auth-svc (`host:port`), pins the deployment CA by its fingerprint and may
//! carry a join token, so `p2p join INVITE` needs nothing else.
//!
//! The text is `p2p-invite:` followed by base64url (no padding) of the JSON
//! `{"v":1,"server":"HOST:PORT","fingerprint":"sha256:…","token":"…"}`
//! (`token` left out when there is none). Parsing is strict about shape and
//! size, since an invite is pasted from chat or mail and may be anything;
//! each refusal says what is wrong in words a person can act on.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// What every invite starts with.
pub const PREFIX: &str = "p2p-invite:";
/// The format version this code writes and reads.
pub const VERSION: u64 = 1;
/// Longest invite text accepted, so a pasted file is refused before it is
/// decoded.
pub const MAX_INVITE_CHARS: usize = 2048;
/// Longest join token an invite may carry.
const MAX_TOKEN_CHARS: usize = 256;
/// Longest host name (DNS limit).
const MAX_HOST_CHARS: usize = 253;
/// What a CA fingerprint starts with.
const FINGERPRINT_PREFIX: &str = "sha256:";

/// What an invite says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Where auth-svc is: `host:port` (an IPv6 host in brackets).
    pub server: String,
    /// The deployment CA's SPKI SHA-256: `sha256:` and 64 lowercase hex
    /// digits.
    pub fingerprint: String,
    /// A join token for an unattended machine; `None`: the joining user logs
    /// in with a password.
    pub token: Option<String>,
}

/// The JSON inside an invite.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    v: u64,
    server: String,
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// Why a text is not a usable invite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Empty, or without the prefix.
    #[error(
        "this is not an invite: it should start with {PREFIX} (ask an admin to run `p2p invite`)"
    )]
    NotAnInvite,
    /// Longer than any invite.
    #[error(
        "this invite is {0} characters long, more than any invite ({MAX_INVITE_CHARS}); \
         copy just the line that starts with {PREFIX}"
    )]
    TooLong(usize),
    /// The part after the prefix is not base64url or not JSON.
    #[error(
        "this invite is damaged ({0}); copy it again in full, from {PREFIX} to the last character"
    )]
    Damaged(String),
    /// Made by another version of p2p.
    #[error(
        "this invite has format version {0}, and this p2p reads version {VERSION}; \
         use the same p2p version as the admin who made it"
    )]
    UnsupportedVersion(u64),
    /// The CA fingerprint has the wrong shape.
    #[error(
        "this invite's CA fingerprint {0:?} is not sha256: and 64 lowercase hex digits; \
         ask for a new invite"
    )]
    BadFingerprint(String),
    /// The server is not `host:port`.
    #[error("this invite's server {server:?} is not HOST:PORT ({why}); ask for a new invite")]
    BadServer {
        /// What the invite says.
        server: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The join token has the wrong shape.
    #[error("this invite's join token is unusable ({0}); ask for a new invite")]
    BadToken(&'static str),
}

impl Invite {
    /// The invite text: [`PREFIX`] and base64url of its JSON.
    pub fn encode(&self) -> String {
        let wire = Wire {
            v: VERSION,
            server: self.server.clone(),
            fingerprint: self.fingerprint.clone(),
            token: self.token.clone(),
        };
        // Serialising plain strings and a number cannot fail.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Reads an invite as a person pasted it (surrounding whitespace and
    /// quotes are ignored) and checks every part's shape.
    pub fn parse(text: &str) -> Result<Invite, InviteError> {
        let text = text.trim();
        let text = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
            .unwrap_or(text)
            .trim();
        let chars = text.chars().count();
        if chars > MAX_INVITE_CHARS {
            return Err(InviteError::TooLong(chars));
        }
        let Some(encoded) = text.strip_prefix(PREFIX) else {
            return Err(InviteError::NotAnInvite);
        };
        let json = URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| InviteError::Damaged("not base64url".into()))?;
        let wire: Wire = serde_json::from_slice(&json).map_err(|e| {
            InviteError::Damaged(format!("not the expected JSON: {}", json_problem(&e)))
        })?;
        if wire.v != VERSION {
            return Err(InviteError::UnsupportedVersion(wire.v));
        }
        check_fingerprint(&wire.fingerprint)?;
        check_server(&wire.server)?;
        if let Some(token) = &wire.token {
            check_token(token)?;
        }
        Ok(Invite {
            server: wire.server,
            fingerprint: wire.fingerprint,
            token: wire.token,
        })
    }
}

/// What kind of JSON error `err` is, without echoing the input.
fn json_problem(err: &serde_json::Error) -> &'static str {
    match err.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "broken syntax",
        serde_json::error::Category::Data => "missing or wrong fields",
        serde_json::error::Category::Eof => "cut short",
    }
}

/// Whether `fingerprint` is `sha256:` and 64 lowercase hex digits.
pub fn is_fingerprint(fingerprint: &str) -> bool {
    fingerprint
        .strip_prefix(FINGERPRINT_PREFIX)
        .is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

fn check_fingerprint(fingerprint: &str) -> Result<(), InviteError> {
    if is_fingerprint(fingerprint) {
        return Ok(());
    }
    let shown: String = fingerprint.chars().take(80).collect();
    Err(InviteError::BadFingerprint(shown))
}

/// Checks `server` is `host:port`: a DNS name or IPv4 address, or an IPv6
/// address in brackets, and a port from 1 to 65535.
pub fn check_server(server: &str) -> Result<(), InviteError> {
    let bad = |why| InviteError::BadServer {
        server: server.chars().take(80).collect(),
        why,
    };
    let (host, port) = server.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(bad("the port is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("the port is not from 1 to 65535")),
        Ok(_) => {}
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ip = inner
            .strip_suffix(']')
            .ok_or_else(|| bad("an unclosed ["))?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address in brackets"))?;
        return Ok(());
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.len() > MAX_HOST_CHARS {
        return Err(bad("the host is too long"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.split('.').all(label_ok) {
        return Err(bad("the host is not a name or an address"));
    }
    Ok(())
}

fn check_token(token: &str) -> Result<(), InviteError> {
    if token.is_empty() {
        return Err(InviteError::BadToken("it is empty"));
    }
    if token.len() > MAX_TOKEN_CHARS {
        return Err(InviteError::BadToken("it is too long"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InviteError::BadToken("it has characters no token has"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint() -> String {
        format!("sha256:{}", "0123456789abcdef".repeat(4))
    }

    fn invite(token: Option<&str>) -> Invite {
        Invite {
            server: "auth.lan:50051".into(),
            fingerprint: fingerprint(),
            token: token.map(String::from),
        }
    }

    /// An invite text around arbitrary JSON.
    fn wrap(json: &str) -> String {
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn an_invite_reads_back_as_written_with_and_without_a_token() {
        for token in [None, Some("p2pjt_abc-DEF_123")] {
            let original = invite(token);
            let text = original.encode();
            assert!(text.starts_with("p2p-invite:"));
            assert!(!text.contains('='), "no padding: {text}");
            assert_eq!(Invite::parse(&text).unwrap(), original);
        }
    }

    #[test]
    fn the_json_has_the_documented_fields_and_omits_a_missing_token() {
        let text = invite(None).encode();
        let json = URL_SAFE_NO_PAD.decode(&text[PREFIX.len()..]).unwrap();
        let json = String::from_utf8(json).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"v":1,"server":"auth.lan:50051","fingerprint":"{}"}}"#,
                fingerprint()
            )
        );
        let text = invite(Some("t")).encode();
        let json = URL_SAFE_NO_PAD.decode(&text[PREFIX.len()..]).unwrap();
        assert!(
            String::from_utf8(json)
                .unwrap()
                .ends_with(r#","token":"t"}"#)
        );
    }

    #[test]
    fn whitespace_quotes_and_padding_around_a_pasted_invite_are_ignored() {
        let original = invite(Some("p2pjt_x"));
        let text = original.encode();
        for pasted in [
            format!("  {text}\n"),
            format!("'{text}'"),
            format!("\"{text}\"\r\n"),
            format!("{text}=="),
        ] {
            assert_eq!(Invite::parse(&pasted).unwrap(), original, "{pasted:?}");
        }
    }

    #[test]
    fn text_without_the_prefix_is_not_an_invite() {
        for text in [
            "",
            "   ",
            "hello",
            "p2pjt_abc",
            "P2P-INVITE:abc",
            "https://x",
        ] {
            let err = Invite::parse(text).unwrap_err();
            assert_eq!(err, InviteError::NotAnInvite, "{text:?}");
            assert!(err.to_string().contains("should start with p2p-invite:"));
        }
    }

    #[test]
    fn hostile_input_is_refused_quickly_and_never_echoed_whole() {
        let huge = format!("{PREFIX}{}", "A".repeat(10_000_000));
        assert_eq!(
            Invite::parse(&huge).unwrap_err(),
            InviteError::TooLong(10_000_000 + PREFIX.len())
        );
        for bad in [
            format!("{PREFIX}!!!not base64!!!"),
            format!("{PREFIX}ab cd"),
            format!("{PREFIX}A"),
        ] {
            let err = Invite::parse(&bad).unwrap_err();
            assert!(matches!(err, InviteError::Damaged(_)), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("copy it again"));
        }
        for json in [
            "",
            "not json",
            "[1,2]",
            r#"{"v":1}"#,
            r#"{"v":"1","server":"a:1","fingerprint":"x"}"#,
            r#"{"v":1,"server":"a:1","fingerprint":"sha256:"#,
        ] {
            let err = Invite::parse(&wrap(json)).unwrap_err();
            assert!(matches!(err, InviteError::Damaged(_)), "{json:?}: {err:?}");
        }
        let err = Invite::parse(&wrap(&format!(
            r#"{{"v":1,"server":"a:1","fingerprint":"{}","token":"{}"}}"#,
            fingerprint(),
            "t".repeat(300)
        )))
        .unwrap_err();
        assert_eq!(err, InviteError::BadToken("it is too long"));
        let err = Invite::parse(&wrap(&format!(
            r#"{{"v":1,"server":"a:1","fingerprint":"{}","token":"a b"}}"#,
            fingerprint()
        )))
        .unwrap_err();
        assert!(matches!(err, InviteError::BadToken(_)));
    }

    #[test]
    fn another_format_version_is_refused_by_number() {
        let json = format!(
            r#"{{"v":2,"server":"a:1","fingerprint":"{}"}}"#,
            fingerprint()
        );
        let err = Invite::parse(&wrap(&json)).unwrap_err();
        assert_eq!(err, InviteError::UnsupportedVersion(2));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn fingerprints_must_be_sha256_and_64_lowercase_hex_digits() {
        assert!(is_fingerprint(&fingerprint()));
        for bad in [
            String::new(),
            "sha256:".into(),
            fingerprint().to_uppercase(),
            fingerprint().replace("sha256:", "sha1:"),
            format!("{}0", fingerprint()),
            fingerprint()[..70].to_string(),
            fingerprint().replace('a', "g"),
        ] {
            let mut original = invite(None);
            original.fingerprint = bad.clone();
            let err = Invite::parse(&original.encode()).unwrap_err();
            assert!(matches!(err, InviteError::BadFingerprint(_)), "{bad:?}");
        }
    }

    #[test]
    fn servers_must_be_host_and_port() {
        for good in [
            "auth:50051",
            "auth.lan:1",
            "10.0.0.5:50051",
            "[::1]:50051",
            "[fe80::1]:65535",
            "p2p-auth.example.org:443",
        ] {
            assert!(check_server(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "auth",
            "auth:",
            ":50051",
            "auth:0",
            "auth:65536",
            "auth:5005x",
            "auth:-1",
            "https://auth:50051",
            "auth/x:50051",
            "::1:50051",
            "[::1:50051",
            "[nope]:50051",
            "-auth:50051",
            "a..b:1",
            "auth :50051",
        ] {
            let err = check_server(bad).unwrap_err();
            assert!(
                err.to_string().contains("is not HOST:PORT"),
                "{bad:?}: {err}"
            );
        }
        let long = format!("{}:1", "a.".repeat(200));
        assert!(check_server(&long).is_err());
    }
}
