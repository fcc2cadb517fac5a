//! The handlers: each gathers data from [`AgentApi`](crate::api::AgentApi)
//! and hands it to [`render`]; each state-changing one checks the CSRF
//! token (the Host and Origin checks ran before, in [`guard`]) and ends
//! with a redirect carrying a one-time message (post/redirect/get).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use p2p_proto::agent::v1 as pb;
use p2p_proto::auth::v1 as auth_pb;
use serde::Deserialize;

use super::Web;
use super::guard::{self, Admin, Authed, Entered, SESSION_COOKIE};
use super::render::{self, Flash, Viewer};
use crate::api::ShareOptions;
use crate::error::Error;

impl Authed {
    /// What the page frame shows about this viewer.
    pub fn viewer(&self) -> Viewer {
        Viewer {
            username: self.user.username.clone(),
            admin: self.is_admin(),
            csrf: self.session.csrf.clone(),
            os_account: self.os_account.clone(),
        }
    }
}

/// An [`Error`] from the agent as an HTTP status and an error page saying
/// what to do; the status code follows the gRPC mapping in one place.
pub fn error_response(err: Error) -> Response {
    let status = tonic::Status::from(err);
    let (code, title) = http_status(status.code());
    render::error_page(code, title, status.message())
}

fn http_status(code: tonic::Code) -> (StatusCode, &'static str) {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => {
            (StatusCode::BAD_REQUEST, "That did not work")
        }
        Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "Not allowed"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Log in again"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "Not possible right now"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "Too many attempts"),
        Code::Unavailable | Code::DeadlineExceeded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "A service is not answering",
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong"),
    }
}

/// The message an action's failure leaves on the next page.
fn failure(err: Error) -> Flash {
    Flash::failed(tonic::Status::from(err).message().to_string())
}

/// Redirects to `to`, leaving `flash` for the page there.
fn after(web: &Web, authed: &Authed, to: &str, flash: Flash) -> Response {
    web.sessions.flash(&authed.session.id, flash);
    Redirect::to(to).into_response()
}

fn take_flash(web: &Web, authed: &Authed) -> Option<Flash> {
    web.sessions.take_flash(&authed.session.id)
}

/// `GET /`: the Files page.
pub async fn root() -> Redirect {
    Redirect::to("/files")
}

/// `?ticket=` on the entry link.
#[derive(Debug, Deserialize)]
pub struct EnterQuery {
    #[serde(default)]
    ticket: String,
}

/// `GET /enter?ticket=…`: trades a one-time link from `p2p web` for a web
/// session (replacing any this browser had) and sends the browser on to
/// the login form, so the spent link leaves the address bar at once.
pub async fn enter(State(web): State<Web>, Query(q): Query<EnterQuery>) -> Response {
    if !web.api.enter_web(&q.ticket) {
        return render::error_page(
            StatusCode::FORBIDDEN,
            "This link does not open the app",
            &format!(
                "A link from p2p web works once, for {}, and only on the agent that made it. \
                 Run p2p web again on the agent's machine, as the user who runs the agent, and \
                 open the new link.",
                render::duration(web.api.web_link_lifetime())
            ),
        );
    }
    let session = web.sessions.enter();
    (
        [(
            header::SET_COOKIE,
            guard::set_cookie(SESSION_COOKIE, &session.id, Some(guard::IDLE_TIMEOUT)),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

/// `?why=` on the login page.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    why: Option<String>,
}

/// `GET /login`: the form, carrying the session's CSRF token; a browser
/// already logged in as the agent's account goes on to Files.
pub async fn login_form(
    State(web): State<Web>,
    Entered(session): Entered,
    Query(q): Query<LoginQuery>,
) -> Response {
    let agent_user = web.api.session().user().map(|u| u.username);
    if session.username.is_some() && session.username == agent_user {
        return Redirect::to("/files").into_response();
    }
    let note = match q.why.as_deref() {
        Some("agent") => Some(Flash::failed(
            "The agent was logged out or logged in as another account (with `p2p login` or \
             `p2p logout`); log in again.",
        )),
        _ => None,
    };
    render::login(&session.csrf, note, agent_user.as_deref()).into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    username: String,
    password: String,
}

/// `POST /login`: the password is checked with auth-svc (always, even
/// when the agent is already logged in as this account); the agent's
/// account stays its owner's choice ([`crate::api::AgentApi::log_in_person`]).
/// The session gets a new id once logged in.
pub async fn login(
    State(web): State<Web>,
    Entered(session): Entered,
    Form(form): Form<LoginForm>,
) -> Response {
    if !p2p_services::local::same_secret(&form.csrf, &session.csrf) {
        return render::error_page(
            StatusCode::FORBIDDEN,
            "Request refused: the login form's security token is missing or out of date",
            "Open the login page again and log in from there.",
        );
    }
    let result = web.api.log_in_person(&form.username, &form.password).await;
    let logged_in = result
        .map(|user| (web.sessions.log_in(&session.id, &user.username), user))
        .and_then(|(new, user)| {
            new.map(|new| (new, user)).ok_or(Error::FailedPrecondition(
                "this browser's web session ended while logging in; run p2p web again".into(),
            ))
        });
    match logged_in {
        Ok((session, user)) => {
            web.sessions.log_out_others(&user.username);
            web.sessions.flash(
                &session.id,
                Flash::ok(format!("Logged in as {}.", user.username)),
            );
            (
                [(
                    header::SET_COOKIE,
                    guard::set_cookie(SESSION_COOKIE, &session.id, Some(guard::IDLE_TIMEOUT)),
                )],
                Redirect::to("/files"),
            )
                .into_response()
        }
        Err(err) => {
            let other_account = matches!(err, Error::OtherAccount { .. }).then(|| err.to_string());
            let status = tonic::Status::from(err);
            let (code, _) = http_status(status.code());
            let text = other_account.unwrap_or_else(|| status_text(&status));
            let agent_user = web.api.session().user().map(|u| u.username);
            let page = render::login(
                &session.csrf,
                Some(Flash::failed(text)),
                agent_user.as_deref(),
            );
            (code, page).into_response()
        }
    }
}

fn status_text(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            "Wrong username or password, or the account is disabled. Check them and try again."
                .to_string()
        }
        _ => status.message().to_string(),
    }
}

/// A form that carries only the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: ends this web session. The agent stays logged in and
/// keeps sharing; `p2p logout` logs the agent itself out.
pub async fn logout(
    State(web): State<Web>,
    authed: Authed,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    web.sessions.remove(&authed.session.id);
    (
        [(
            header::SET_COOKIE,
            guard::set_cookie(SESSION_COOKIE, "", Some(std::time::Duration::ZERO)),
        )],
        Redirect::to("/?why=out"),
    )
        .into_response()
}

pub use super::render::FilesQuery;

/// `GET /files`: one page of the network's entries, as the query orders
/// and filters them.
pub async fn files(
    State(web): State<Web>,
    authed: Authed,
    Query(q): Query<FilesQuery>,
) -> Response {
    let viewer = authed.viewer();
    let (listing, flash) = match web.api.list_files(&q.request()).await {
        Ok(page) => (
            render::FilesListing {
                files: page.files,
                next_page_token: page.next_page_token,
                total_count: page.total_count,
            },
            take_flash(&web, &authed),
        ),
        Err(err) => (render::FilesListing::default(), Some(failure(err))),
    };
    render::files(&viewer, flash, &q, &listing).into_response()
}

/// A per-file action's fields.
#[derive(Debug, Deserialize)]
pub struct FileForm {
    #[serde(default)]
    csrf: String,
    file: String,
    #[serde(default)]
    destination: String,
    #[serde(default)]
    network: bool,
}

/// `POST /files/download`: starts the download and shows Downloads.
pub async fn download(
    State(web): State<Web>,
    authed: Authed,
    Form(form): Form<FileForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    match web.api.download(&form.file, &form.destination, false).await {
        Ok((progress, destination)) => {
            let name = progress.borrow().name.clone();
            after(
                &web,
                &authed,
                "/downloads",
                Flash::ok(format!("Downloading {name} to {}.", destination.display())),
            )
        }
        Err(err) => after(&web, &authed, "/files", failure(err)),
    }
}

/// `POST /files/cancel`.
pub async fn cancel(
    State(web): State<Web>,
    authed: Authed,
    Form(form): Form<FileForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    match web.api.cancel(&form.file).await {
        Ok(_) => after(
            &web,
            &authed,
            "/downloads",
            Flash::ok("Download cancelled; its verified chunks are kept for a later resume."),
        ),
        Err(err) => after(&web, &authed, "/downloads", failure(err)),
    }
}

/// `POST /files/remove`: the local copy, or (`network=true`) the file
/// from the whole network.
pub async fn remove(
    State(web): State<Web>,
    authed: Authed,
    Form(form): Form<FileForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    match web.api.remove(&form.file, form.network).await {
        Ok(id) => after(
            &web,
            &authed,
            "/files",
            Flash::ok(if form.network {
                format!("Removed {} from the network.", id.short())
            } else {
                format!("Removed this agent's copy of {}.", id.short())
            }),
        ),
        Err(err) => after(&web, &authed, "/files", failure(err)),
    }
}

/// `GET /share`.
pub async fn share_form(State(web): State<Web>, authed: Authed) -> Response {
    let flash = take_flash(&web, &authed);
    render::share(
        &authed.viewer(),
        flash,
        &web.uploads_dir.display().to_string(),
        &web.sharing.all(),
    )
    .into_response()
}

/// The share-a-path form.
#[derive(Debug, Deserialize)]
pub struct SharePathForm {
    #[serde(default)]
    csrf: String,
    path: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    replace: bool,
}

/// `POST /share/path`: hashes, publishes and serves a file on this machine.
pub async fn share_path(
    State(web): State<Web>,
    authed: Authed,
    Form(form): Form<SharePathForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let options = ShareOptions {
        path: form.path,
        name: form.name,
        mime_type: String::new(),
        replace: form.replace,
    };
    match web.share(options).await {
        Ok(shared) => after(&web, &authed, "/files", shared_flash(&shared)),
        Err(err) => after(&web, &authed, "/share", failure(err)),
    }
}

/// The message after a share.
pub fn shared_flash(shared: &crate::api::Shared) -> Flash {
    let name = shared.file.as_ref().map_or("the file", |f| f.name.as_str());
    if shared.already_published {
        Flash::ok(format!(
            "{name} was already in the network; this agent now serves it too."
        ))
    } else {
        Flash::ok(format!("Shared {name}; other agents can download it now."))
    }
}

/// `GET /downloads`.
pub async fn downloads(State(web): State<Web>, authed: Authed) -> Response {
    let viewer = authed.viewer();
    let rows = render::download_rows(&viewer, &web.api.transfers());
    render::downloads(&viewer, take_flash(&web, &authed), rows).into_response()
}

/// `GET /peers`.
pub async fn peers(State(web): State<Web>, authed: Authed) -> Response {
    let request = p2p_proto::index::v1::ListPeersRequest {
        include_offline: false,
    };
    let (peers, flash) = match web.api.list_peers(request).await {
        Ok(list) => (list.peers, take_flash(&web, &authed)),
        Err(err) => (Vec::new(), Some(failure(err))),
    };
    render::peers(&authed.viewer(), flash, &peers).into_response()
}

/// `GET /status`.
pub async fn status(State(web): State<Web>, authed: Authed) -> Response {
    let flash = take_flash(&web, &authed);
    render::status(&authed.viewer(), flash, &web.api.status()).into_response()
}

/// `GET /accounts` (admins only).
pub async fn accounts(State(web): State<Web>, authed: Authed) -> Response {
    if let Err(refused) = authed.require_admin() {
        return refused.into_response();
    }
    let users = match web.api.list_users().await {
        Ok(users) => users,
        Err(err) => return error_response(err),
    };
    // The accounts stay usable when join tokens cannot be listed.
    let listed = web
        .api
        .list_join_tokens()
        .await
        .map_err(|err| tonic::Status::from(err).message().to_string());
    let tokens = match &listed {
        Ok(tokens) => render::JoinTokens::Listed(tokens),
        Err(why) => render::JoinTokens::Unavailable(why),
    };
    let flash = take_flash(&web, &authed);
    let now_ms = p2p_services::time::now_ms();
    render::accounts(&authed.viewer(), flash, &users, tokens, now_ms).into_response()
}

/// Fields of the account forms; which are used depends on the action.
#[derive(Debug, Deserialize)]
pub struct AccountForm {
    #[serde(default)]
    csrf: String,
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    disabled: bool,
}

fn role_of(text: &str) -> i32 {
    if text == "admin" {
        auth_pb::Role::Admin as i32
    } else {
        auth_pb::Role::User as i32
    }
}

/// What an account action does.
#[derive(Debug, Clone, Copy)]
pub enum AccountAction {
    /// Create an account.
    Add,
    /// Change its role.
    Role,
    /// Disable or enable it.
    Disabled,
    /// Reset its password.
    Password,
    /// Delete it.
    Delete,
}

/// Every `POST /accounts/...`: admins only, CSRF checked, then the one
/// AccountService call through the agent API, whose rules and messages
/// (the last admin, username and password rules) are auth-svc's.
pub async fn account_action(
    web: Web,
    Admin(authed): Admin,
    action: AccountAction,
    form: AccountForm,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let api = &web.api;
    let username = form.username.trim().to_string();
    let result = match action {
        AccountAction::Add => api
            .create_user(auth_pb::CreateUserRequest {
                username: username.clone(),
                password: form.password,
                role: role_of(&form.role),
            })
            .await
            .map(|u| format!("Added {} ({}).", u.username, form.role)),
        AccountAction::Role => api
            .set_role(auth_pb::SetRoleRequest {
                username: username.clone(),
                role: role_of(&form.role),
            })
            .await
            .map(|u| format!("{} is now {}.", u.username, form.role)),
        AccountAction::Disabled => api
            .set_disabled(auth_pb::SetDisabledRequest {
                username: username.clone(),
                disabled: form.disabled,
            })
            .await
            .map(|u| {
                if u.disabled {
                    format!("Disabled {}; its sessions stop working.", u.username)
                } else {
                    format!("Enabled {}.", u.username)
                }
            }),
        AccountAction::Password => api
            .change_password(auth_pb::ChangePasswordRequest {
                username: username.clone(),
                old_password: String::new(),
                new_password: form.password,
            })
            .await
            .map(|()| format!("Reset the password of {username}; its other sessions were ended.")),
        AccountAction::Delete => api
            .delete_user(auth_pb::DeleteUserRequest {
                user_id: String::new(),
                username: username.clone(),
            })
            .await
            .map(|()| format!("Deleted {username}.")),
    };
    let flash = match result {
        Ok(text) => Flash::ok(text),
        Err(err) => failure(err),
    };
    after(&web, &authed, "/accounts", flash)
}

/// Fields of the invite form.
#[derive(Debug, Deserialize)]
pub struct InviteForm {
    #[serde(default)]
    csrf: String,
    /// The account for a join token; empty: an invite without one.
    #[serde(default)]
    username: String,
    #[serde(default)]
    uses: String,
    #[serde(default)]
    ttl_seconds: String,
    #[serde(default)]
    description: String,
}

/// A whole number from a form field; empty is 0 (the agent's default).
fn form_number(text: &str, what: &str) -> Result<u64, Flash> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse()
        .map_err(|_| Flash::failed(format!("{what} must be a whole number; it was {text:?}.")))
}

/// `POST /accounts/invite` (admins only, CSRF checked): makes an invite
/// through the agent API, with a join token when an account is named. The
/// invite goes back in the flash (the session's memory), so the Accounts
/// page shows it once after the redirect and it is never in a URL.
pub async fn invite(
    State(web): State<Web>,
    Admin(authed): Admin,
    Form(form): Form<InviteForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let numbers = form_number(&form.uses, "Machines it may join").and_then(|uses| {
        let ttl = form_number(&form.ttl_seconds, "Good for")?;
        let uses = u32::try_from(uses)
            .map_err(|_| Flash::failed("A join token is good for 1 to 1000 machines."))?;
        Ok((uses, ttl))
    });
    let (uses, ttl_seconds) = match numbers {
        Ok(numbers) => numbers,
        Err(flash) => return after(&web, &authed, "/accounts", flash),
    };
    let username = form.username.trim().to_string();
    let request = pb::CreateInviteRequest {
        token_for_username: username.clone(),
        uses,
        ttl_seconds,
        description: form.description,
    };
    let flash = match web.api.create_invite(request).await {
        Ok(made) => {
            let text = match &made.token {
                Some(token) => format!(
                    "Made an invite for {} with join token {}: it joins up to {} machine{} as {}.",
                    made.server,
                    token.id,
                    token.uses,
                    if token.uses == 1 { "" } else { "s" },
                    token.username
                ),
                None => format!(
                    "Made an invite for {}; the person on the new machine logs in with their own \
                     password.",
                    made.server
                ),
            };
            Flash::invite(text, made.invite)
        }
        Err(err) => failure(err),
    };
    after(&web, &authed, "/accounts", flash)
}

/// Fields of a join token's Revoke button.
#[derive(Debug, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

/// `POST /accounts/join-tokens/revoke` (admins only, CSRF checked).
pub async fn revoke_join_token(
    State(web): State<Web>,
    Admin(authed): Admin,
    Form(form): Form<RevokeForm>,
) -> Response {
    if let Err(refused) = authed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let id = form.id.trim().to_string();
    let flash = match web.api.revoke_join_token(&id).await {
        Ok(()) => Flash::ok(format!(
            "Revoked join token {id}; machines that already joined with it keep their \
             certificates."
        )),
        Err(err) => failure(err),
    };
    after(&web, &authed, "/accounts", flash)
}

/// Any path the app does not have.
pub async fn not_found() -> Response {
    render::error_page(
        StatusCode::NOT_FOUND,
        "No such page",
        "Use the links at the top of the page, or start again at the Files page.",
    )
}
