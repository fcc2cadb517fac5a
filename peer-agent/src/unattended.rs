//! The unattended login: an agent started with `--user`/`--password` logs
//! in by itself and, until that works, keeps trying in the background,
//! whatever the reason it failed (auth-svc down, throttling, a wrong
//! password), so a machine that boots before auth-svc, or whose password
//! is fixed at auth-svc later, comes online without anyone running
//! `p2p login`.
//!
//! The delays are a pure function ([`next_delay`]): 1 s doubling to 60 s,
//! at least what auth-svc asks for when it throttles (`retry-after`), and
//! [`REFUSED_DELAY`] after a refused password. The last failure and the
//! time of the next attempt are kept for `Status` ([`Attempts::describe`]).
//!
//! It knows nothing of the session: [`Unattended::start`] is given the
//! login to attempt (the session's own), so the session uses this module
//! and never the other way round.
//!
//! Ownership: the retry task is owned by [`Unattended`], held by the
//! session; it is aborted when a person logs in or out by hand, when the
//! session is dropped, and it watches the agent's shutdown token.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::error::Error;

/// First delay after a failure that may pass by itself.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between attempts while auth-svc is down or throttling.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Delay after auth-svc refused the credentials: someone has to change the
/// password (here or there) first, and fast retries would only feed the
/// login throttle.
pub const REFUSED_DELAY: Duration = Duration::from_secs(300);
/// Metadata key in which auth-svc says how many seconds to wait after
/// throttling a login.
const RETRY_AFTER: &str = "retry-after";

/// Why one login attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// auth-svc could not be reached or did not answer.
    Unavailable,
    /// auth-svc throttled the attempt, maybe saying for how long.
    Throttled(Option<Duration>),
    /// auth-svc refused the username or password.
    Refused,
    /// Anything else (for example the account is disabled).
    Other,
}

impl Failure {
    /// Classifies the error `Session::login` returned.
    pub fn of(err: &Error) -> Self {
        match err {
            Error::AuthUnavailable(_) => Self::Unavailable,
            Error::Remote { status, .. } => match status.code() {
                Code::Unauthenticated => Self::Refused,
                Code::ResourceExhausted => Self::Throttled(
                    status
                        .metadata()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_secs),
                ),
                Code::Unavailable | Code::DeadlineExceeded => Self::Unavailable,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

/// The delay before the next attempt, given the previous delay (`None`
/// before the first retry) and why this attempt failed.
pub fn next_delay(previous: Option<Duration>, failure: &Failure) -> Duration {
    let backoff = match previous {
        None => FIRST_DELAY,
        Some(previous) => (previous * 2).clamp(FIRST_DELAY, MAX_DELAY),
    };
    match failure {
        Failure::Unavailable | Failure::Other => backoff,
        Failure::Throttled(asked) => backoff.max(asked.unwrap_or_default()),
        Failure::Refused => REFUSED_DELAY,
    }
}

/// The last failed attempt and when the next one is due.
#[derive(Debug, Clone)]
pub struct Attempts {
    /// What went wrong, for a person.
    pub reason: String,
    /// When the next attempt starts.
    pub retry_at: Instant,
}

impl Attempts {
    /// "`<reason>`; retrying in N s", as of `now`.
    pub fn describe(&self, now: Instant) -> String {
        let left = self.retry_at.saturating_duration_since(now);
        format!(
            "{}; retrying in {} s",
            self.reason,
            left.as_secs_f64().ceil() as u64
        )
    }
}

/// The running retry loop and what it last saw. Dropping it stops the loop.
#[derive(Debug)]
pub struct Unattended {
    task: JoinHandle<()>,
    attempts: Arc<Mutex<Option<Attempts>>>,
}

impl Drop for Unattended {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Unattended {
    /// Starts logging in as `user`: calls `log_in` until it works, it
    /// answers `None` (the session is gone), the value is dropped, or
    /// `shutdown` fires.
    pub fn start<F, Fut>(user: String, log_in: F, shutdown: CancellationToken) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Option<Result<(), Error>>> + Send,
    {
        let attempts = Arc::new(Mutex::new(None));
        let state = attempts.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = retry_loop(user, log_in, state) => {}
            }
        });
        Self { task, attempts }
    }

    /// The last failure and the next attempt, while still trying.
    pub fn attempts(&self) -> Option<Attempts> {
        if self.task.is_finished() {
            return None;
        }
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn retry_loop<F, Fut>(user: String, mut log_in: F, attempts: Arc<Mutex<Option<Attempts>>>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<Result<(), Error>>>,
{
    let mut delay = None;
    loop {
        let Some(result) = log_in().await else {
            return;
        };
        let err = match result {
            Ok(()) => {
                *attempts.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            }
            Err(err) => err,
        };
        let failure = Failure::of(&err);
        let wait = next_delay(delay, &failure);
        delay = Some(wait.min(MAX_DELAY));
        let reason = match failure {
            Failure::Refused => {
                tracing::error!(%err, user = %user, retry_in = ?wait,
                    "unattended login refused: check --user/--password (P2P_USER/P2P_PASSWORD); retrying slowly");
                format!("auth-svc refused the login as {user} (wrong --user or --password?): {err}")
            }
            _ => {
                tracing::warn!(%err, user = %user, retry_in = ?wait, "cannot log in yet");
                format!("unattended login as {user} failed: {err}")
            }
        };
        *attempts.lock().unwrap_or_else(|e| e.into_inner()) = Some(Attempts {
            reason,
            retry_at: Instant::now() + wait,
        });
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn delays_double_from_one_second_to_a_minute() {
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..9 {
            let next = next_delay(delay, &Failure::Unavailable);
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn throttling_waits_at_least_as_long_as_auth_svc_asks() {
        let asked = Failure::Throttled(Some(Duration::from_secs(42)));
        assert_eq!(next_delay(None, &asked), Duration::from_secs(42));
        let unsaid = Failure::Throttled(None);
        assert_eq!(
            next_delay(Some(Duration::from_secs(4)), &unsaid),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn a_refused_password_is_retried_slowly() {
        assert_eq!(next_delay(None, &Failure::Refused), REFUSED_DELAY);
        assert!(REFUSED_DELAY > MAX_DELAY);
    }

    #[test]
    fn failures_are_classified_from_the_login_error() {
        assert_eq!(
            Failure::of(&Error::AuthUnavailable("connection refused".into())),
            Failure::Unavailable
        );
        let auth = |status| Error::Remote {
            service: "auth",
            status,
        };
        assert_eq!(
            Failure::of(&auth(Status::unauthenticated("wrong username or password"))),
            Failure::Refused
        );
        let mut throttled = Status::resource_exhausted("too many failed logins");
        throttled
            .metadata_mut()
            .insert(RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(
            Failure::of(&auth(throttled)),
            Failure::Throttled(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            Failure::of(&auth(Status::resource_exhausted("slow down"))),
            Failure::Throttled(None)
        );
    }

    #[test]
    fn the_description_counts_down_to_the_next_attempt() {
        let now = Instant::now();
        let attempts = Attempts {
            reason: "auth service unreachable".into(),
            retry_at: now + Duration::from_millis(4_200),
        };
        assert_eq!(
            attempts.describe(now),
            "auth service unreachable; retrying in 5 s"
        );
        assert_eq!(
            attempts.describe(now + Duration::from_secs(10)),
            "auth service unreachable; retrying in 0 s"
        );
    }
}
