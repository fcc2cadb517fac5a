//! One-time links into the web app: how a browser proves it acts for the
//! OS user who runs the agent.
//!
//! The web app listens on loopback, and every OS user of the machine can
//! reach loopback, so reaching it proves nothing. Only the agent's own OS
//! user can call the control API (its Unix socket is 0600; its TCP listener
//! wants the 0600 token file), and `OpenWeb` there ([`EntryLinks::issue`],
//! behind `p2p web`) makes a random ticket. The link that carries it is
//! good once, until [`EntryLinks::lifetime`] has passed: the web app trades
//! it for a session cookie ([`EntryLinks::redeem`]) and it is gone, so
//! nothing reusable stays in the browser's history or a `Referer`.
//!
//! Only a hash of each ticket is kept, and tickets are looked up by that
//! hash, so neither a memory dump nor a lookup's timing gives one away.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;

/// The web app's path that redeems a ticket.
pub const ENTRY_PATH: &str = "/enter";
/// The query parameter that carries the ticket.
pub const TICKET_PARAM: &str = "ticket";
/// Most links waiting to be opened; making another drops the oldest.
const MAX_PENDING: usize = 32;

/// A link just made, for `p2p web`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLink {
    /// The whole link, ticket included.
    pub url: String,
    /// How long it stays good if nobody opens it.
    pub lifetime: Duration,
}

/// The links this agent made that nobody has opened yet.
#[derive(Debug)]
pub struct EntryLinks {
    /// Where browsers reach the web app (ending in `/`); `None` when the
    /// web app is off.
    base_url: Option<String>,
    lifetime: Duration,
    /// Ticket hash → when the link stops being good.
    pending: Mutex<HashMap<blake3::Hash, Instant>>,
}

impl EntryLinks {
    /// Links into the web app at `base_url` (`None`: the web app is off),
    /// each good for `lifetime`.
    pub fn new(base_url: Option<String>, lifetime: Duration) -> Self {
        Self {
            base_url,
            lifetime,
            pending: Mutex::default(),
        }
    }

    /// How long a new link stays good.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<blake3::Hash, Instant>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh one-time link. Callers must be the agent's own OS user: the
    /// control API is the only front end that offers this.
    pub fn issue(&self) -> Result<EntryLink, Error> {
        let base = self.base_url.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this agent's web app is off (--web-listen is empty); start the agent with \
                 --web-listen 127.0.0.1:50055 to use it"
                    .into(),
            )
        })?;
        let ticket = p2p_services::local::random_secret();
        let now = Instant::now();
        let mut pending = self.lock();
        pending.retain(|_, expires| *expires > now);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending.iter().min_by_key(|(_, e)| **e).map(|(h, _)| *h)
        {
            pending.remove(&oldest);
        }
        pending.insert(blake3::hash(ticket.as_bytes()), now + self.lifetime);
        Ok(EntryLink {
            url: format!(
                "{base}{}?{TICKET_PARAM}={ticket}",
                ENTRY_PATH.trim_start_matches('/')
            ),
            lifetime: self.lifetime,
        })
    }

    /// Spends `ticket`: true once for a link this agent made that is still
    /// within its lifetime, false for anything else (unknown, already
    /// opened, or too old).
    pub fn redeem(&self, ticket: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .remove(&blake3::hash(ticket.trim().as_bytes()))
            .is_some_and(|expires| expires > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket_of(link: &EntryLink) -> &str {
        link.url
            .split_once(&format!("{TICKET_PARAM}="))
            .map(|(_, t)| t)
            .expect("a ticket in the link")
    }

    #[test]
    fn a_link_opens_once() {
        let links = EntryLinks::new(Some("http://127.0.0.1:9/".into()), Duration::from_secs(60));
        let link = links.issue().unwrap();
        assert!(
            link.url.starts_with("http://127.0.0.1:9/enter?ticket="),
            "{}",
            link.url
        );
        let ticket = ticket_of(&link);
        assert!(!links.redeem("0123"), "a guess opened a session");
        assert!(links.redeem(ticket));
        assert!(!links.redeem(ticket), "the same link opened twice");
    }

    #[test]
    fn a_link_past_its_lifetime_is_refused() {
        let links = EntryLinks::new(Some("http://127.0.0.1:9/".into()), Duration::ZERO);
        let link = links.issue().unwrap();
        assert!(!links.redeem(ticket_of(&link)));
    }

    #[test]
    fn links_are_bounded_and_the_oldest_goes_first() {
        let links = EntryLinks::new(Some("http://h/".into()), Duration::from_secs(60));
        let first = links.issue().unwrap();
        let rest: Vec<_> = (0..MAX_PENDING).map(|_| links.issue().unwrap()).collect();
        assert_eq!(links.lock().len(), MAX_PENDING);
        assert!(!links.redeem(ticket_of(&first)));
        assert!(links.redeem(ticket_of(&rest[MAX_PENDING - 1])));
    }

    #[test]
    fn no_link_without_a_web_app() {
        let links = EntryLinks::new(None, Duration::from_secs(60));
        let err = links.issue().unwrap_err();
        assert!(err.to_string().contains("--web-listen"), "{err}");
    }
}
