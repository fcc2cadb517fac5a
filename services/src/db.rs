//! Database connect + embedded migrations, one function for every service.
//!
//! The URL scheme picks the backend: `sqlite:` (the embedded default) or
//! `postgres:`/`postgresql:` (the scale path). Both go through sqlx's `Any`
//! driver so a service writes its queries once; each service embeds one
//! migration directory per backend because DDL differs (types, identity
//! columns), while the queries themselves stay portable: `$N` placeholders,
//! `BIGINT` integers, times as Unix milliseconds, `ON CONFLICT` upserts.
//! Flags are stored as `BIGINT` 0/1: the `Any` driver binds `bool` but
//! cannot decode SQLite's `BOOLEAN` back.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

/// The database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (or `sqlite::memory:`).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if any.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// One migration set per backend, embedded with `sqlx::migrate!`.
pub struct Migrations {
    /// Applied to SQLite databases.
    pub sqlite: Migrator,
    /// Applied to PostgreSQL databases.
    pub postgres: Migrator,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no backend we support.
    #[error(
        "unsupported database URL {0:?}: use sqlite://PATH (e.g. sqlite://auth.db) or postgres://USER:PASS@HOST/DB"
    )]
    UnsupportedUrl(String),
    /// Connecting failed.
    #[error("cannot open database {url}: {source}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate database {url}: {source}")]
    Migrate {
        /// The URL with any password removed.
        url: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// An open, migrated pool and the backend behind it.
#[derive(Debug, Clone)]
pub struct Database {
    /// The pool every query goes through.
    pub pool: AnyPool,
    /// Which backend the pool talks to.
    pub backend: Backend,
}

/// The URL with its password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Opens the database at `url`, creating a SQLite file if missing, and
/// applies the backend's migrations. SQLite runs in WAL mode with a busy
/// timeout so readers never block the writer.
pub async fn connect(url: &str, migrations: &Migrations) -> Result<Database, DbError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url).ok_or_else(|| DbError::UnsupportedUrl(url.to_string()))?;
    let shown = redact(url);
    let connect_err = |source| DbError::Connect {
        url: shown.clone(),
        source,
    };
    let url = match backend {
        Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
            if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            }
        }
        _ => url.to_string(),
    };
    let options = AnyConnectOptions::from_str(&url)
        .map_err(connect_err)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let mut pool = AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(10))
        .max_connections(match backend {
            Backend::Sqlite => 8,
            Backend::Postgres => 16,
        });
    if backend == Backend::Sqlite {
        pool = pool.after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        });
    }
    let pool = pool.connect_with(options).await.map_err(connect_err)?;
    let migrator = match backend {
        Backend::Sqlite => &migrations.sqlite,
        Backend::Postgres => &migrations.postgres,
    };
    migrator
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate {
            url: shown.clone(),
            source,
        })?;
    tracing::info!(url = %shown, ?backend, "database ready");
    Ok(Database { pool, backend })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("postgres://p2p:secret@db:5432/p2p"),
            "postgres://p2p:***@db:5432/p2p"
        );
        assert_eq!(redact("sqlite://auth.db"), "sqlite://auth.db");
        assert_eq!(redact("postgres://p2p@db/p2p"), "postgres://p2p@db/p2p");
    }

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
    }
}

/// Databases for tests: a fresh SQLite file or a fresh PostgreSQL database
/// per test, so tests never see each other's rows.
pub mod testing {
    use super::*;

    /// The environment variable naming a PostgreSQL server for tests, as an
    /// admin URL such as `postgres://postgres:postgres@127.0.0.1:5432/postgres`.
    pub const POSTGRES_ENV: &str = "P2P_TEST_POSTGRES_URL";

    /// A SQLite URL for a new file inside `dir`.
    pub fn sqlite_url(dir: &std::path::Path, name: &str) -> String {
        format!("sqlite://{}", dir.join(name).display())
    }

    /// Creates a new, empty PostgreSQL database and returns its URL, or
    /// `None` (after printing why) when no server is configured. When CI is
    /// set (`CI=true`) a configured but unreachable server is an error, so
    /// CI can never silently skip the PostgreSQL run.
    pub async fn fresh_postgres_database() -> Option<String> {
        let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{POSTGRES_ENV} must be set in CI: the PostgreSQL run may not be skipped");
            }
            eprintln!("skipping the PostgreSQL run: set {POSTGRES_ENV} to a server's admin URL");
            return None;
        };
        sqlx::any::install_default_drivers();
        let mut conn = match sqlx::AnyConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(err) if std::env::var("CI").is_err() => {
                eprintln!(
                    "skipping the PostgreSQL run: {} unreachable: {err}",
                    redact(&admin_url)
                );
                return None;
            }
            Err(err) => panic!(
                "PostgreSQL at {} unreachable in CI: {err}",
                redact(&admin_url)
            ),
        };
        let name = format!(
            "p2p_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ) + &format!("_{}", crate::time::now_ms());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let base = match admin_url.rfind('/') {
            Some(slash) if slash > admin_url.find("://").map_or(0, |i| i + 2) => {
                &admin_url[..slash]
            }
            _ => admin_url.as_str(),
        };
        Some(format!("{base}/{name}"))
    }

    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    use sqlx::Connection;
}
