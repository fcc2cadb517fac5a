//! The web app every agent serves on `--web-listen`: the seed's desktop
//! windows (login, Files, Share, Downloads, Peers, Accounts, Status) as
//! server-rendered pages, with one small script for live updates and
//! upload progress, every asset compiled into the binary.
//!
//! It is a front end like [`crate::control`]: handlers in [`pages`],
//! [`upload`] and [`live`] call [`AgentApi`] for everything the agent
//! does, and [`render`] turns results into escaped HTML. [`guard`] holds
//! what a browser must pass first (Host allowlist, the entry gate that
//! wants a session begun from a one-time `p2p web` link, Origin, session
//! cookie, CSRF token) and the security headers.
//!
//! [`serve`] owns every task it starts (the server and each live feed, in
//! a `TaskTracker`); all stop when the shutdown token is cancelled.

pub mod folder;
pub mod guard;
pub mod live;
pub mod pages;
pub mod render;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AgentApi;
use crate::error::Error;
use guard::{Admin, HostAllowlist, Sessions};
use pages::{AccountAction, AccountForm};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct Web {
    api: AgentApi,
    sessions: Arc<Sessions>,
    hosts: Arc<HostAllowlist>,
    uploads_dir: PathBuf,
    port: u16,
    sharing: Arc<live::Sharing>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Web {
    /// Shares a file through the agent API, showing its hashing progress
    /// on every open Share page while it runs.
    async fn share(&self, options: crate::api::ShareOptions) -> Result<crate::api::Shared, Error> {
        let shown = std::path::Path::new(options.path.trim())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if options.name.trim().is_empty() {
            shown
        } else {
            options.name.trim().to_string()
        };
        let job = self.sharing.start(name);
        self.api
            .share(options, |hashed, total| {
                job.progress(hashed, total);
                true
            })
            .await
    }
}

/// Serves the web app on `listener` until `shutdown` is cancelled.
/// `allowed_hosts` are the `Host` names accepted besides loopback ones.
pub async fn serve(
    api: AgentApi,
    listener: TcpListener,
    allowed_hosts: Vec<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("web listener has no local address", e))?;
    let mut hosts = allowed_hosts;
    hosts.push(addr.to_string());
    let web = Web {
        uploads_dir: api.data_dir().join("uploads"),
        api,
        sessions: Arc::default(),
        hosts: Arc::new(HostAllowlist::new(hosts)),
        port: addr.port(),
        sharing: Arc::default(),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    let tasks = web.tasks.clone();
    tracing::info!(url = %format!("http://{addr}/"), "web app listening");
    let result = axum::serve(listener, router(web))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| Error::io(format!("web app on {addr} stopped"), e));
    tasks.close();
    tasks.wait().await;
    result
}

/// Every route, behind the request checks.
pub fn router(web: Web) -> Router {
    let account = |action: AccountAction| {
        move |State(web): State<Web>, admin: Admin, Form(form): Form<AccountForm>| {
            pages::account_action(web, admin, action, form)
        }
    };
    Router::new()
        .route("/", get(pages::root))
        .route(crate::entry::ENTRY_PATH, get(pages::enter))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/files", get(pages::files))
        .route("/files/download", post(pages::download))
        .route("/files/cancel", post(pages::cancel))
        .route("/files/remove", post(pages::remove))
        .route("/share", get(pages::share_form))
        .route("/share/path", post(pages::share_path))
        .route(
            "/share/upload",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/share/upload-folder",
            post(upload::upload_folder).layer(DefaultBodyLimit::disable()),
        )
        .route("/folder", get(folder::page))
        .route("/downloads", get(pages::downloads))
        .route("/peers", get(pages::peers))
        .route("/status", get(pages::status))
        .route("/accounts", get(pages::accounts))
        .route("/accounts/add", post(account(AccountAction::Add)))
        .route("/accounts/role", post(account(AccountAction::Role)))
        .route("/accounts/disabled", post(account(AccountAction::Disabled)))
        .route("/accounts/password", post(account(AccountAction::Password)))
        .route("/accounts/delete", post(account(AccountAction::Delete)))
        .route("/accounts/invite", post(pages::invite))
        .route(
            "/accounts/join-tokens/revoke",
            post(pages::revoke_join_token),
        )
        .route("/events/files", get(live::files))
        .route("/events/downloads", get(live::downloads))
        .route("/events/sharing", get(live::sharing))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            guard::check_request,
        ))
        .with_state(web)
}

/// The stylesheet, compiled in.
const APP_CSS: &str = include_str!("assets/app.css");
/// The one script, compiled in.
const APP_JS: &str = include_str!("assets/app.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}
