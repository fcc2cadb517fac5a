//! What every browser request passes before a handler runs, and the web
//! sessions it checks: the `Host` allowlist (DNS rebinding), the entry
//! gate (no page, form or feed without a session), the `Origin` check on
//! state-changing requests, the session cookie, the CSRF token, and the
//! security headers on every response.
//!
//! A web session is a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie. It starts only from a one-time link ([`crate::entry`]) that
//! the agent's own OS user got from `p2p web`: loopback is open to every
//! OS user of the machine, the link is not. The session then still needs
//! the account's password ([`Authed`]) and is good only on this agent,
//! only while the agent is logged in as that same account, and only until
//! it has been idle for [`IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use p2p_services::local::{random_secret, same_secret};

use super::Web;
use super::render;

/// A web session idle this long must log in again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);
/// Most web sessions kept at once; the least recently used goes first.
const MAX_SESSIONS: usize = 64;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "p2p_session";
/// What a browser without a session may fetch: the entry link and the
/// assets of the page that explains how to get in.
const OPEN_PATHS: [&str; 3] = [
    crate::entry::ENTRY_PATH,
    "/assets/app.css",
    "/assets/app.js",
];

/// The Content-Security-Policy of every response: nothing inline, nothing
/// from elsewhere, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The hosts the web app answers to: loopback names on any port, the
/// address it listens on, and the names the operator allowed.
#[derive(Debug, Clone)]
pub struct HostAllowlist {
    extra: Vec<String>,
}

impl HostAllowlist {
    /// Loopback names plus `extra` (`host` or `host:port`, from
    /// `--web-allow-host`, and the bound address).
    pub fn new(extra: Vec<String>) -> Self {
        let extra = extra
            .into_iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Self { extra }
    }

    /// Whether a `Host` header names this agent. A name an attacker's DNS
    /// points at 127.0.0.1 is refused: that is how rebinding works.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    host.as_str()
                }
            }
            _ => host.as_str(),
        };
        matches!(name, "localhost" | "127.0.0.1" | "[::1]")
            || self.extra.iter().any(|e| *e == host || *e == name)
    }
}

/// One browser that came in through a one-time link.
#[derive(Debug, Clone)]
pub struct WebSession {
    /// The cookie value.
    pub id: String,
    /// The account it logged in as with the password; `None` until then.
    pub username: Option<String>,
    /// The token every state-changing request must carry.
    pub csrf: String,
    /// A message to show once on the next page.
    pub flash: Option<render::Flash>,
    last_seen: Instant,
}

/// Every web session of this agent, in memory: a restart logs browsers out.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, WebSession>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WebSession>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for a browser that opened a one-time link; it
    /// logs in with a password next.
    pub fn enter(&self) -> WebSession {
        self.insert(None)
    }

    /// Replaces session `id` with a fresh one (a new id, so an id seen
    /// before the password was typed is worth nothing) logged in as
    /// `username`. `None` when `id` is no longer live.
    pub fn log_in(&self, id: &str, username: &str) -> Option<WebSession> {
        self.lock().remove(id)?;
        Some(self.insert(Some(username.to_string())))
    }

    fn insert(&self, username: Option<String>) -> WebSession {
        let session = WebSession {
            id: random_secret(),
            username,
            csrf: random_secret(),
            flash: None,
            last_seen: Instant::now(),
        };
        let mut all = self.lock();
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .values()
                .min_by_key(|s| s.last_seen)
                .map(|s| s.id.clone())
        {
            all.remove(&oldest);
        }
        all.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session with this id, touched; expired ones are dropped.
    pub fn get(&self, id: &str) -> Option<WebSession> {
        let mut all = self.lock();
        let now = Instant::now();
        all.retain(|_, s| now - s.last_seen < IDLE_TIMEOUT);
        let session = all.get_mut(id)?;
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Sends every session logged in as an account other than `username`
    /// back to the login form (the agent's account changed).
    pub fn log_out_others(&self, username: &str) {
        for session in self.lock().values_mut() {
            if session.username.as_deref().is_some_and(|u| u != username) {
                session.username = None;
            }
        }
    }

    /// Leaves a message for the session's next page.
    pub fn flash(&self, id: &str, flash: render::Flash) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(flash);
        }
    }

    /// Takes the session's pending message.
    pub fn take_flash(&self, id: &str) -> Option<render::Flash> {
        self.lock().get_mut(id)?.flash.take()
    }
}

/// Reads one cookie from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for a browser-only, same-site-only cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let age = max_age.map_or(String::new(), |d| format!("; Max-Age={}", d.as_secs()));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The outer check on every request: Host, then Origin for anything that
/// changes state; and the security headers on every answer.
pub async fn check_request(State(web): State<Web>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let entered = OPEN_PATHS.contains(&request.uri().path())
        || cookie(request.headers(), SESSION_COOKIE)
            .is_some_and(|id| web.sessions.get(id).is_some());
    let mut response = if !web.hosts.allows(&host) {
        render::error_page(
            StatusCode::FORBIDDEN,
            "This address is not allowed",
            &format!(
                "The agent's web app answers only to its own address (for example http://127.0.0.1:{}/), \
                 so that other web sites cannot reach it through their own names. Open it by that \
                 address, or start the agent with --web-allow-host NAME to allow another name.",
                web.port
            ),
        )
    } else if !entered {
        let logged_out = request.uri().query().is_some_and(|q| q.contains("why=out"));
        render::how_to_enter(StatusCode::FORBIDDEN, logged_out)
    } else if !matches!(*request.method(), Method::GET | Method::HEAD)
        && !same_origin(request.headers(), &host)
    {
        render::error_page(
            StatusCode::FORBIDDEN,
            "Request refused: it did not come from this page",
            "The browser said this request came from another site (or did not say where it came \
             from), so the agent refused it. Open the page from the agent's address and try again.",
        )
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Whether a state-changing request says it comes from a page of this
/// host: `Origin` when the browser sends it, else `Referer`; neither is
/// refused.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let expected = format!("http://{host}");
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().is_ok_and(|o| o == expected);
    }
    headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .is_some_and(|r| r == expected || r.starts_with(&format!("{expected}/")))
}

/// Why a logged-in request is refused (403, with a page saying why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The CSRF token is missing or wrong.
    Csrf,
    /// The page is for admins.
    NotAdmin,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Csrf => render::error_page(
                StatusCode::FORBIDDEN,
                "Request refused: the form's security token is missing or out of date",
                "Reload the page and submit the form again. If you logged in again in another \
                 tab, use that tab.",
            ),
            Refusal::NotAdmin => render::error_page(
                StatusCode::FORBIDDEN,
                "Only admins manage accounts",
                "Ask an admin of this network to add, change or remove accounts.",
            ),
        }
    }
}

/// A request from a logged-in browser whose session is still good: the
/// agent is logged in as the same user.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The web session.
    pub session: WebSession,
    /// The account, as the agent's session knows it.
    pub user: p2p_proto::auth::v1::User,
    /// The OS account the agent acts as on paths the browser names.
    pub os_account: String,
}

impl Authed {
    /// Whether the account is an admin.
    pub fn is_admin(&self) -> bool {
        self.user.role == p2p_proto::auth::v1::Role::Admin as i32
    }

    /// Refuses a state-changing request whose CSRF token is missing or
    /// wrong.
    pub fn check_csrf(&self, token: &str) -> Result<(), Refusal> {
        if same_secret(token, &self.session.csrf) {
            Ok(())
        } else {
            Err(Refusal::Csrf)
        }
    }

    /// Refuses users who are not admins.
    pub fn require_admin(&self) -> Result<(), Refusal> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Refusal::NotAdmin)
        }
    }
}

impl FromRequestParts<Web> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        let session = Entered::from_request_parts(parts, web).await?.0;
        let to_login = |why: &str| {
            if parts.method == Method::GET {
                Redirect::to(&format!("/login{why}")).into_response()
            } else {
                render::error_page(
                    StatusCode::UNAUTHORIZED,
                    "Log in first",
                    "This browser is not logged in to the web app. Open the login page, log in \
                     with the agent's account and its password, and try again.",
                )
            }
        };
        let Some(username) = session.username.clone() else {
            return Err(to_login(""));
        };
        match web.api.session().user() {
            Some(user) if user.username == username => Ok(Self {
                session,
                user,
                os_account: web.api.os_account().to_string(),
            }),
            agent => {
                let agent = agent.map(|u| u.username).unwrap_or_default();
                web.sessions.log_out_others(&agent);
                Err(to_login("?why=agent"))
            }
        }
    }
}

/// A request from a browser that came in through a one-time link, logged
/// in or not. The entry gate in [`check_request`] has already turned away
/// every other request but the link itself and the assets.
#[derive(Debug, Clone)]
pub struct Entered(pub WebSession);

impl FromRequestParts<Web> for Entered {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|id| web.sessions.get(id))
            .map(Self)
            .ok_or_else(|| render::how_to_enter(StatusCode::FORBIDDEN, false))
    }
}

/// An [`Authed`] request from an admin; anyone else gets 403 before the
/// request body is even read.
#[derive(Debug, Clone)]
pub struct Admin(pub Authed);

impl FromRequestParts<Web> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        let authed = Authed::from_request_parts(parts, web).await?;
        authed
            .require_admin()
            .map_err(IntoResponse::into_response)?;
        Ok(Self(authed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_and_allowed_hosts_pass() {
        let hosts = HostAllowlist::new(vec!["p2p.lan:8080".into()]);
        assert!(hosts.allows("127.0.0.1:50055"));
        assert!(hosts.allows("localhost:1"));
        assert!(hosts.allows("[::1]:50055"));
        assert!(hosts.allows("P2P.lan:8080"));
        assert!(!hosts.allows("p2p.lan:9090"));
        assert!(!hosts.allows("evil.example"));
        assert!(!hosts.allows("evil.example:50055"));
        assert!(!hosts.allows("127.0.0.1.evil.example"));
        assert!(!hosts.allows(""));
    }

    #[test]
    fn origin_must_name_this_host() {
        let mut headers = HeaderMap::new();
        assert!(!same_origin(&headers, "127.0.0.1:1"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:1"),
        );
        assert!(same_origin(&headers, "127.0.0.1:1"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers, "127.0.0.1:1"));
        let mut referred = HeaderMap::new();
        referred.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:1/files"),
        );
        assert!(same_origin(&referred, "127.0.0.1:1"));
        referred.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:12/"),
        );
        assert!(!same_origin(&referred, "127.0.0.1:1"));
    }
}
