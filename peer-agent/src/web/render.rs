//! Every page of the web app as HTML, from one renderer: handlers gather
//! plain data and call a function here. maud escapes every value it
//! interpolates, so names, sizes and messages from the network are shown
//! as text, never as markup. No inline script or style: the one script
//! and stylesheet are served from `/assets/` (see [`super::assets`]).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use p2p_proto::agent::v1 as pb;
use p2p_proto::auth::v1 as auth_pb;
use p2p_proto::index::v1 as index_pb;

use crate::api::Transfer;
use crate::download::Stage;
use crate::size::human;

/// A one-time message shown at the top of the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// Whether it reports success (else a failure with what to do).
    pub ok: bool,
    /// The text.
    pub text: String,
    /// An invite just made, shown once by the Accounts page. It may hold a
    /// join token's secret, so it travels only here, in the session's
    /// memory, never in a URL.
    pub invite: Option<String>,
}

impl Flash {
    /// A success message.
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            ok: true,
            text: text.into(),
            invite: None,
        }
    }

    /// A failure message.
    pub fn failed(text: impl Into<String>) -> Self {
        Self {
            ok: false,
            text: text.into(),
            invite: None,
        }
    }

    /// A success message with an invite to show once.
    pub fn invite(text: impl Into<String>, invite: String) -> Self {
        Self {
            invite: Some(invite),
            ..Self::ok(text)
        }
    }
}

/// What the page frame needs to know about who is looking.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The logged-in account.
    pub username: String,
    /// Whether it may see Accounts.
    pub admin: bool,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    /// The OS account the agent reads and writes paths as.
    pub os_account: String,
}

/// The pages in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The network's files.
    Files,
    /// Share a file.
    Share,
    /// Downloads in progress and finished.
    Downloads,
    /// The network's agents.
    Peers,
    /// Account administration.
    Accounts,
    /// This agent.
    Status,
    /// The login form.
    Login,
    /// How to get in without a one-time link.
    Enter,
}

impl Page {
    fn title(self) -> &'static str {
        match self {
            Page::Files => "Files",
            Page::Share => "Share",
            Page::Downloads => "Downloads",
            Page::Peers => "Peers",
            Page::Accounts => "Accounts",
            Page::Status => "Status",
            Page::Login => "Log in",
            Page::Enter => "Open this app with p2p web",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Page::Files => "/files",
            Page::Share => "/share",
            Page::Downloads => "/downloads",
            Page::Peers => "/peers",
            Page::Accounts => "/accounts",
            Page::Status => "/status",
            Page::Login => "/login",
            Page::Enter => crate::entry::ENTRY_PATH,
        }
    }
}

/// The frame around every page: title, navigation, flash, main content.
pub fn layout(page: Page, viewer: Option<&Viewer>, flash: Option<Flash>, body: Markup) -> Markup {
    let nav = [
        Page::Files,
        Page::Share,
        Page::Downloads,
        Page::Peers,
        Page::Accounts,
        Page::Status,
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title()) " · P2P File Transfer" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "P2P File Transfer" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Main" {
                            ul {
                                @for p in nav {
                                    @if p != Page::Accounts || viewer.admin {
                                        li {
                                            a href=(p.path()) aria-current=[(p == page).then_some("page")] { (p.title()) }
                                        }
                                    }
                                }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            span { "Logged in as " strong { (viewer.username) } }
                            " "
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (page.title()) }
                    @if let Some(flash) = flash {
                        p.flash.(if flash.ok { "ok" } else { "failed" }) role=(if flash.ok { "status" } else { "alert" }) { (flash.text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// An error page: what went wrong and what to do, with the status code.
pub fn error_page(status: StatusCode, title: &str, what_to_do: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · P2P File Transfer" }
                link rel="stylesheet" href="/assets/app.css";
            }
            body {
                main #main {
                    h1 { (title) }
                    p.flash.failed role="alert" { (what_to_do) }
                    p { a href="/files" { "Back to the files" } " · " a href="/login" { "Log in" } }
                }
            }
        }
    };
    (status, body).into_response()
}

/// What a browser without a web session gets for every page, form and
/// feed: how to get in, and nothing else.
pub fn how_to_enter(status: StatusCode, logged_out: bool) -> Response {
    let flash = logged_out.then(|| Flash::ok("You are logged out of the web app."));
    let page = layout(
        Page::Enter,
        None,
        flash,
        html! {
            p { "This web app acts for the OS user who runs the agent, with that user's files, so it opens only through a one-time link that only that user can make." }
            p { "On the agent's machine, as the user who runs the agent, run:" }
            pre { code { "p2p web" } }
            p { "It prints a link (and opens it when a desktop is there). The link works once, for a few minutes; then log in with the agent's account and its password." }
            p.hint { "For an agent in a container: " code { "docker compose exec peer-a /p2p web" } "." }
        },
    );
    (status, page).into_response()
}

/// The login form. `agent_user` is the account the agent is logged in
/// as: the only one this form accepts.
pub fn login(csrf: &str, note: Option<Flash>, agent_user: Option<&str>) -> Markup {
    layout(
        Page::Login,
        None,
        note,
        html! {
            form.card method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                p {
                    label for="username" { "Username" }
                    @if let Some(user) = agent_user {
                        input #username name="username" autocomplete="username" required value=(user) readonly;
                    } @else {
                        input #username name="username" autocomplete="username" required autofocus;
                    }
                }
                p {
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required autofocus[agent_user.is_some()];
                }
                button type="submit" { "Log in" }
            }
            @if let Some(user) = agent_user {
                p.hint { "This agent is logged in as " strong { (user) } ", so the web app signs in only as that account. To use another account on this machine, run " code { "p2p login NAME" } " there." }
            } @else {
                p.hint { "The agent is not logged in: logging in here logs it in as that account." }
            }
            p.hint { "Logging in to the web app always takes the account's password, even when the agent itself is logged in." }
        },
    )
}

fn added(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn local_label(file: &pb::NetworkFile) -> String {
    let size = file.file.as_ref().map_or(0, |f| f.size_bytes);
    let percent = (file.local_bytes * 100).checked_div(size).unwrap_or(100);
    if !file.local_problem.is_empty() {
        return file.local_problem.clone();
    }
    match pb::LocalState::try_from(file.local_state).unwrap_or(pb::LocalState::None) {
        pb::LocalState::Complete => "100 %".into(),
        pb::LocalState::Downloading => format!("downloading {percent} %"),
        pb::LocalState::Partial => format!("{percent} % (paused)"),
        _ => "—".into(),
    }
}

/// The Files page: filter, the live table, and where it gets updates.
pub fn files(viewer: &Viewer, flash: Option<Flash>, filter: &str, rows: Markup) -> Markup {
    let live = format!("/events/files?q={}&v={}", urlencode(filter), version(&rows));
    layout(
        Page::Files,
        Some(viewer),
        flash,
        html! {
            form.filter method="get" action="/files" role="search" {
                label for="q" { "Filter by name" }
                input #q name="q" type="search" value=(filter);
                button type="submit" { "Filter" }
            }
            p.live-note #files-live aria-live="polite" { "Updates live." }
            div.table-wrap {
                table #files {
                    caption.visually-hidden { "Files in the network" }
                    thead {
                        tr {
                            th scope="col" { "No" }
                            th scope="col" { "Name" }
                            th scope="col" { "Size" }
                            th scope="col" { "Type" }
                            th scope="col" { "Owner" }
                            th scope="col" { "Added" }
                            th scope="col" { abbr title="online holders / complete copies" { "Holders" } }
                            th scope="col" { "Here" }
                            th scope="col" { "Actions" }
                        }
                    }
                    tbody data-live=(live) { (rows) }
                }
            }
        },
    )
}

/// The Files table's rows (also what the live feed sends).
pub fn file_rows(viewer: &Viewer, files: &[pb::NetworkFile]) -> Markup {
    html! {
        @if files.is_empty() {
            tr { td colspan="9" { "No files yet. Share one on the Share page." } }
        }
        @for (n, file) in files.iter().enumerate() {
            @if let Some(info) = &file.file {
                @let state = pb::LocalState::try_from(file.local_state).unwrap_or(pb::LocalState::None);
                @let mine = info.owner_name == viewer.username;
                tr data-file-id=(info.file_id) {
                    td { (n + 1) }
                    td.name { (info.name) }
                    td { (human(info.size_bytes)) }
                    td { (info.mime_type) }
                    td { (info.owner_name) }
                    td { (added(info.added_at_ms)) }
                    td { (info.online_holders) " / " (info.complete_copies) }
                    td.here { (local_label(file)) }
                    td.actions {
                        @if state == pb::LocalState::Downloading {
                            (action("/files/cancel", &viewer.csrf, &info.file_id, "Cancel", &format!("Cancel the download of {}", info.name), None))
                        } @else if state != pb::LocalState::Complete {
                            (download_form(viewer, info))
                        }
                        @if state != pb::LocalState::None || !file.local_problem.is_empty() {
                            (action("/files/remove", &viewer.csrf, &info.file_id, "Remove here", &format!("Remove the copy of {} on this agent", info.name), None))
                        }
                        @if mine || viewer.admin {
                            (action("/files/remove", &viewer.csrf, &info.file_id, "Remove from network", &format!("Remove {} from the network", info.name), Some(("network", "true"))))
                        }
                    }
                }
            }
        }
    }
}

/// Download, to the downloads directory or (opened with "to a path") to
/// a path on the agent's machine.
fn download_form(viewer: &Viewer, info: &index_pb::FileInfo) -> Markup {
    let field = format!("dest-{}", info.file_id);
    html! {
        form.inline.download method="post" action="/files/download" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="file" value=(info.file_id);
            button type="submit" aria-label=(format!("Download {}", info.name)) { "Download" }
            details {
                summary { "to a path" }
                label for=(field) { "Save " (info.name) " to (a path on the agent's machine)" }
                input id=(field) name="destination" placeholder="/home/me/Downloads/";
                small.hint { "Written as the agent's OS user, " (viewer.os_account) "." }
            }
        }
    }
}

fn action(
    to: &str,
    csrf: &str,
    file_id: &str,
    label: &str,
    aria: &str,
    extra: Option<(&str, &str)>,
) -> Markup {
    html! {
        form.inline method="post" action=(to) {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="file" value=(file_id);
            @if let Some((name, value)) = extra {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" aria-label=(aria) { (label) }
        }
    }
}

/// A share being hashed.
#[derive(Debug, Clone)]
pub struct ShareJob {
    /// Which one.
    pub id: u64,
    /// Its name in the network.
    pub name: String,
    /// Bytes hashed so far.
    pub hashed_bytes: u64,
    /// Its size (0 until known).
    pub total_bytes: u64,
}

/// The shares being hashed (also what the live feed sends).
pub fn sharing_rows(jobs: &[ShareJob]) -> Markup {
    html! {
        @for job in jobs {
            @let percent = (job.hashed_bytes * 100).checked_div(job.total_bytes).unwrap_or(0);
            p.sharing {
                "Hashing " strong { (job.name) } ": "
                progress max="100" value=(percent) aria-label=(format!("{} hashed", job.name)) { (percent) " %" }
                " " (percent) " % of " (human(job.total_bytes))
            }
        }
    }
}

/// The Share page: a path on the agent's machine, or a browser upload.
pub fn share(
    viewer: &Viewer,
    flash: Option<Flash>,
    uploads_dir: &str,
    jobs: &[ShareJob],
) -> Markup {
    let rows = sharing_rows(jobs);
    let live = format!("/events/sharing?v={}", version(&rows));
    layout(
        Page::Share,
        Some(viewer),
        flash,
        html! {
            div #sharing aria-live="polite" data-live=(live) { (rows) }
            section.card aria-labelledby="upload-h" {
                h2 #upload-h { "Upload from this browser" }
                p.hint { "The file is streamed to " code { (uploads_dir) } " on the agent's machine, hashed, published and served from there." }
                form #upload method="post" action="/share/upload" enctype="multipart/form-data" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    p {
                        label for="upload-file" { "File" }
                        input #upload-file name="file" type="file" required;
                    }
                    p { progress #upload-progress max="100" value="0" aria-label="Upload progress" hidden {} span #upload-text aria-live="polite" {} }
                    button type="submit" { "Upload and share" }
                }
            }
            section.card aria-labelledby="path-h" {
                h2 #path-h { "Share a file on the agent's machine" }
                p.hint { "The agent reads the file as its OS user, " strong { (viewer.os_account) } ", and offers it to everyone in the network." }
                form method="post" action="/share/path" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    p {
                        label for="path" { "Absolute path" }
                        input #path name="path" required placeholder="/home/me/video.mkv";
                    }
                    p {
                        label for="name" { "Name in the network (optional)" }
                        input #name name="name";
                    }
                    p {
                        input #replace name="replace" type="checkbox" value="true";
                        label.inline for="replace" { "Replace an earlier share of this path that changed" }
                    }
                    button type="submit" { "Share" }
                }
            }
        },
    )
}

/// The Downloads page with its live table.
pub fn downloads(viewer: &Viewer, flash: Option<Flash>, rows: Markup) -> Markup {
    let live = format!("/events/downloads?v={}", version(&rows));
    layout(
        Page::Downloads,
        Some(viewer),
        flash,
        html! {
            p.live-note aria-live="polite" { "Updates live." }
            div #downloads data-live=(live) { (rows) }
        },
    )
}

/// The Downloads list (also what the live feed sends).
pub fn download_rows(viewer: &Viewer, transfers: &[Transfer]) -> Markup {
    html! {
        @if transfers.is_empty() {
            p { "No downloads yet. Pick a file on the Files page and press Download." }
        }
        @for t in transfers {
            @let p = &t.progress;
            @let percent = (p.have_bytes * 100).checked_div(p.total_bytes).unwrap_or(100);
            article.card.download data-file-id=(p.file_id.to_string()) data-stage=(stage_name(p.stage)) {
                h2 { (p.name) }
                p {
                    progress max="100" value=(percent) aria-label=(format!("{} downloaded", p.name)) { (percent) " %" }
                    " " span.percent { (percent) " %" }
                    " · " (human(p.have_bytes)) " of " (human(p.total_bytes))
                }
                dl.facts {
                    dt { "State" } dd { (stage_label(p.stage)) }
                    @if p.stage == Stage::Downloading || p.stage == Stage::Locating {
                        dt { "Rate" } dd { (human(p.rate_bps)) "/s" }
                        dt { "Sources in use" } dd { (p.sources_in_use) }
                        dt { "Time left" } dd { (p.eta.map(duration).unwrap_or_else(|| "estimating".into())) }
                    }
                    dt { "Resumed chunks" } dd { (p.resumed_chunks) }
                    dt { "Saved to" } dd { code { (t.destination.display().to_string()) } }
                }
                @if let Some(failure) = &p.failure {
                    p.flash.failed role="alert" { (failure.message()) }
                    p.hint { "Verified chunks are kept: press Download again on the Files page to resume." }
                }
                @if !p.is_final() {
                    (action("/files/cancel", &viewer.csrf, &p.file_id.to_string(), "Cancel", &format!("Cancel the download of {}", p.name), None))
                }
            }
        }
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Locating => "locating",
        Stage::Downloading => "downloading",
        Stage::Verifying => "verifying",
        Stage::Done => "done",
        Stage::Failed => "failed",
    }
}

fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Locating => "Finding sources",
        Stage::Downloading => "Downloading",
        Stage::Verifying => "Checking the whole file",
        Stage::Done => "Done",
        Stage::Failed => "Failed",
    }
}

/// A span of time as the pages show it: "45 s", "2 min 0 s", "1 h 5 min".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The Peers page.
pub fn peers(viewer: &Viewer, flash: Option<Flash>, peers: &[index_pb::Peer]) -> Markup {
    layout(
        Page::Peers,
        Some(viewer),
        flash,
        html! {
            div.table-wrap {
                table {
                    caption.visually-hidden { "Agents in the network" }
                    thead { tr {
                        th scope="col" { "User" }
                        th scope="col" { "Address" }
                        th scope="col" { "State" }
                        th scope="col" { "Uploads" }
                        th scope="col" { "Upload rate" }
                        th scope="col" { "Last 60 s" }
                        th scope="col" { "Free disk" }
                        th scope="col" { "Complete files" }
                    } }
                    tbody {
                        @if peers.is_empty() { tr { td colspan="8" { "No agent is online." } } }
                        @for peer in peers {
                            @let load = peer.load.unwrap_or_default();
                            tr {
                                td { (peer.username) }
                                td { code { (peer.advertise_addr) } }
                                td { (if peer.state == index_pb::PeerState::Online as i32 { "online" } else { "offline" }) }
                                td { (load.active_uploads) " / " (if load.max_uploads == 0 { "∞".to_string() } else { load.max_uploads.to_string() }) }
                                td { (human(load.upload_rate_bps)) "/s" @if load.max_upload_rate_bps > 0 { " of " (human(load.max_upload_rate_bps)) "/s" } }
                                td { (human(load.uploaded_bytes_last_60s)) }
                                td { (human(load.free_disk_bytes)) }
                                td { (peer.complete_files) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn role_name(role: i32) -> &'static str {
    if role == auth_pb::Role::Admin as i32 {
        "admin"
    } else {
        "user"
    }
}

/// Join tokens as the Accounts page lists them: what auth-svc returned, or
/// why it could not be asked.
#[derive(Debug, Clone, Copy)]
pub enum JoinTokens<'a> {
    /// Newest first.
    Listed(&'a [auth_pb::JoinToken]),
    /// The listing failed; the reason, in words.
    Unavailable(&'a str),
}

/// A join token's state as of `now_ms`: `active`, `revoked`, `expired` or
/// `used up`.
pub fn join_token_state(token: &auth_pb::JoinToken, now_ms: i64) -> &'static str {
    if token.revoked {
        "revoked"
    } else if token.expires_at_ms <= now_ms {
        "expired"
    } else if token.uses_left == 0 {
        "used up"
    } else {
        "active"
    }
}

/// The lifetimes the invite form offers, in seconds, and the one chosen
/// unless the admin picks another (the agent's default).
const INVITE_LIFETIMES: [(u64, &str); 4] = [
    (3_600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "7 days"),
    (30 * 86_400, "30 days"),
];

/// The Accounts page (admins only): accounts, the invite form with the
/// invite just made (once, from the flash), and the join tokens.
pub fn accounts(
    viewer: &Viewer,
    mut flash: Option<Flash>,
    users: &[auth_pb::User],
    tokens: JoinTokens<'_>,
    now_ms: i64,
) -> Markup {
    let hidden = |name: &str, value: &str| html! { input type="hidden" name=(name) value=(value); };
    let invite = flash.as_mut().and_then(|f| f.invite.take());
    let default_lifetime = crate::api::INVITE_TOKEN_TTL.as_secs();
    layout(
        Page::Accounts,
        Some(viewer),
        flash,
        html! {
            @if let Some(invite) = &invite {
                section.card #new-invite aria-labelledby="new-invite-h" {
                    h2 #new-invite-h { "The new invite" }
                    p { strong { "Copy it now: it is shown only this once." } " Select the text and copy it; anyone who has it can join a machine, so hand it over like a password." }
                    label for="invite-text" { "Invite" }
                    textarea #invite-text readonly rows="4" spellcheck="false" autocomplete="off" { (invite) }
                    p { "On the new machine, run:" }
                    pre { code { "p2p join '" (invite) "'" } }
                }
            }
            section.card aria-labelledby="add-h" {
                h2 #add-h { "Add an account" }
                form #add-user method="post" action="/accounts/add" {
                    (hidden("csrf", &viewer.csrf))
                    p { label for="new-username" { "Username" } input #new-username name="username" required autocomplete="off"; }
                    p { label for="new-password" { "Password" } input #new-password name="password" type="password" required autocomplete="new-password"; }
                    p {
                        label for="new-role" { "Role" }
                        select #new-role name="role" { option value="user" { "user" } option value="admin" { "admin" } }
                    }
                    button type="submit" { "Add account" }
                }
            }
            div.table-wrap {
                table #accounts {
                    caption.visually-hidden { "Accounts" }
                    thead { tr {
                        th scope="col" { "Username" }
                        th scope="col" { "Role" }
                        th scope="col" { "State" }
                        th scope="col" { "Created" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for user in users {
                            @let admin = user.role == auth_pb::Role::Admin as i32;
                            tr data-username=(user.username) {
                                td { (user.username) }
                                td { (role_name(user.role)) }
                                td { (if user.disabled { "disabled" } else { "enabled" }) }
                                td { (added(user.created_at_ms)) }
                                td.actions {
                                    form.inline method="post" action="/accounts/role" {
                                        (hidden("csrf", &viewer.csrf)) (hidden("username", &user.username))
                                        (hidden("role", if admin { "user" } else { "admin" }))
                                        button type="submit" aria-label=(format!("Make {} {}", user.username, if admin { "a user" } else { "an admin" })) { (if admin { "Make user" } else { "Make admin" }) }
                                    }
                                    form.inline method="post" action="/accounts/disabled" {
                                        (hidden("csrf", &viewer.csrf)) (hidden("username", &user.username))
                                        (hidden("disabled", if user.disabled { "false" } else { "true" }))
                                        button type="submit" aria-label=(format!("{} {}", if user.disabled { "Enable" } else { "Disable" }, user.username)) { (if user.disabled { "Enable" } else { "Disable" }) }
                                    }
                                    form.inline method="post" action="/accounts/password" {
                                        (hidden("csrf", &viewer.csrf)) (hidden("username", &user.username))
                                        label.visually-hidden for=(format!("pw-{}", user.id)) { "New password for " (user.username) }
                                        input id=(format!("pw-{}", user.id)) name="password" type="password" required autocomplete="new-password" placeholder="new password";
                                        button type="submit" aria-label=(format!("Reset the password of {}", user.username)) { "Reset password" }
                                    }
                                    form.inline method="post" action="/accounts/delete" {
                                        (hidden("csrf", &viewer.csrf)) (hidden("username", &user.username))
                                        button.danger type="submit" aria-label=(format!("Delete {}", user.username)) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section.card aria-labelledby="invite-h" {
                h2 #invite-h { "Invite a machine" }
                p.hint { "An invite tells a new machine where auth-svc is and which CA to trust. Leave the account empty when a person there logs in with their own password; name an account to add a join token, so an unattended machine joins as that account." }
                form #invite method="post" action="/accounts/invite" {
                    (hidden("csrf", &viewer.csrf))
                    p {
                        label for="invite-account" { "Account for a join token (optional)" }
                        input #invite-account name="username" autocomplete="off" list="account-names";
                        datalist #account-names { @for user in users { option value=(user.username) {} } }
                    }
                    p { label for="invite-uses" { "Machines it may join" } input #invite-uses name="uses" type="number" min="1" max="1000" value="1"; }
                    p {
                        label for="invite-lifetime" { "Good for" }
                        select #invite-lifetime name="ttl_seconds" {
                            @for (seconds, label) in INVITE_LIFETIMES {
                                option value=(seconds) selected[seconds == default_lifetime] { (label) }
                            }
                        }
                    }
                    p { label for="invite-description" { "Description" } input #invite-description name="description" maxlength="200" autocomplete="off" placeholder="lab printers"; }
                    button type="submit" { "Make invite" }
                }
            }
            section aria-labelledby="join-tokens-h" {
                h2 #join-tokens-h { "Join tokens" }
                @match tokens {
                    JoinTokens::Unavailable(why) => p.flash.failed role="alert" { "Join tokens cannot be listed: " (why) },
                    JoinTokens::Listed([]) => p.hint { "No join tokens yet. Name an account above to make one." },
                    JoinTokens::Listed(tokens) => div.table-wrap {
                        table #join-tokens {
                            caption.visually-hidden { "Join tokens" }
                            thead { tr {
                                th scope="col" { "Id" }
                                th scope="col" { "Account" }
                                th scope="col" { "Uses left" }
                                th scope="col" { "Expires" }
                                th scope="col" { "State" }
                                th scope="col" { "Description" }
                                th scope="col" { "Actions" }
                            } }
                            tbody {
                                @for token in tokens {
                                    @let state = join_token_state(token, now_ms);
                                    tr data-token=(token.id) {
                                        td { code { (token.id) } }
                                        td { (token.username) }
                                        td { (token.uses_left) " of " (token.uses) }
                                        td { (added(token.expires_at_ms)) }
                                        td { (state) }
                                        td { (token.description) }
                                        td.actions {
                                            @if !token.revoked {
                                                form.inline method="post" action="/accounts/join-tokens/revoke" {
                                                    (hidden("csrf", &viewer.csrf)) (hidden("id", &token.id))
                                                    button.danger type="submit" aria-label=(format!("Revoke join token {}", token.id)) { "Revoke" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    },
                }
            }
        },
    )
}

/// The Status page.
pub fn status(viewer: &Viewer, flash: Option<Flash>, s: &pb::StatusResponse) -> Markup {
    let c = s.counters.unwrap_or_default();
    let load = s.load.unwrap_or_default();
    layout(
        Page::Status,
        Some(viewer),
        flash,
        html! {
            dl.facts.card {
                dt { "Session" } dd { (s.user.as_ref().map(|u| format!("{} ({})", u.username, role_name(u.role))).unwrap_or_else(|| "not logged in".into())) }
                @if !s.login_error.is_empty() { dt { "Login problem" } dd { (s.login_error) } }
                dt { "Peer id" } dd { code { (if s.peer_id.is_empty() { "not registered yet" } else { &s.peer_id }) } }
                dt { "Advertised address" } dd { code { (s.advertise_addr) } }
                dt { "Index" } dd { code { (s.index_url) } " · " (if s.index_reachable { "reachable" } else { "unreachable: check that index-svc runs" }) }
                dt { "Auth" } dd { code { (s.auth_url) } }
                @if !s.ca_fingerprint.is_empty() {
                    dt { "Deployment CA" } dd { code { (s.ca_fingerprint) } }
                    dt { "Certificate" } dd {
                        "for " code { (s.cert_address) } ", until " (added(s.cert_not_after_ms))
                        (if s.cert_not_after_ms <= p2p_services::time::now_ms() { " (expired: run p2p join again)" } else { " (renews by itself)" })
                    }
                }
                dt { "Data directory" } dd { code { (s.data_dir) } " · " (human(s.free_disk_bytes)) " free" }
                dt { "Shared files" } dd { (s.shared_files) }
                dt { "Active downloads" } dd { (s.active_downloads) }
                dt { "Partial downloads" } dd { (s.partial_downloads) " (" (human(s.partial_bytes)) ")" }
                dt { "Uploads now" } dd { (load.active_uploads) " at " (human(load.upload_rate_bps)) "/s" }
                dt { "Uploaded" } dd { (human(c.bytes_uploaded)) " (" (c.chunks_served) " chunks)" }
                dt { "Downloaded" } dd { (human(c.bytes_downloaded)) " (" (c.chunks_downloaded) " chunks, " (c.chunks_rejected) " rejected)" }
            }
            @if !s.held_file_problems.is_empty() {
                h2 { "Held files with problems" }
                ul {
                    @for p in &s.held_file_problems {
                        li { strong { (p.name) } " at " code { (p.path) } ": " (p.problem) }
                    }
                }
            }
        },
    )
}

/// A short digest of rendered HTML: a live feed skips sending what the
/// page already shows.
pub fn version(html: &Markup) -> String {
    blake3::hash(html.0.as_bytes()).to_hex()[..16].to_string()
}

/// Percent-encodes a query value.
pub fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_network_are_text_not_markup() {
        let viewer = Viewer {
            username: "ann".into(),
            admin: false,
            os_account: "ann (uid 1000)".into(),
            csrf: "t".into(),
        };
        let file = pb::NetworkFile {
            file: Some(index_pb::FileInfo {
                file_id: "ab".into(),
                name: "<img src=x onerror=alert(1)>.txt".into(),
                owner_name: "\"><script>".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let html = file_rows(&viewer, &[file]).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;.txt"),
            "{html}"
        );
    }

    fn admin() -> Viewer {
        Viewer {
            username: "root".into(),
            admin: true,
            os_account: "root (uid 0)".into(),
            csrf: "csrf-token".into(),
        }
    }

    fn token(id: &str, revoked: bool, description: &str) -> auth_pb::JoinToken {
        auth_pb::JoinToken {
            id: id.into(),
            username: "printer".into(),
            uses_left: 2,
            uses: 5,
            expires_at_ms: 2_000,
            revoked,
            description: description.into(),
            created_by: "root".into(),
            created_at_ms: 1_000,
        }
    }

    #[test]
    fn the_invite_just_made_is_shown_once_with_the_command_to_run() {
        let invite = "p2p-invite:eyJ2IjoxfQ".to_string();
        let flash = Flash::invite("Made an invite.", invite.clone());
        let html = accounts(&admin(), Some(flash), &[], JoinTokens::Listed(&[]), 0).into_string();
        assert!(html.contains("Made an invite."), "{html}");
        assert!(html.contains("shown only this once"), "{html}");
        assert!(html.contains(&format!(">{invite}</textarea>")), "{html}");
        assert!(html.contains(&format!("p2p join '{invite}'")), "{html}");
        let again = accounts(&admin(), None, &[], JoinTokens::Listed(&[]), 0).into_string();
        assert!(!again.contains("p2p-invite:"), "{again}");
        assert!(!again.contains("new-invite"), "{again}");
    }

    #[test]
    fn the_invite_form_posts_with_the_csrf_token_and_offers_the_accounts() {
        let users = [auth_pb::User {
            username: "printer".into(),
            ..Default::default()
        }];
        let html = accounts(&admin(), None, &users, JoinTokens::Listed(&[]), 0).into_string();
        assert!(
            html.contains(r#"<form id="invite" method="post" action="/accounts/invite">"#),
            "{html}"
        );
        assert!(html.contains(r#"name="csrf" value="csrf-token""#), "{html}");
        assert!(html.contains(r#"<option value="printer">"#), "{html}");
        assert!(
            html.contains(r#"<option value="86400" selected>1 day</option>"#),
            "{html}"
        );
        assert!(html.contains("No join tokens yet"), "{html}");
    }

    #[test]
    fn join_tokens_are_listed_with_revoke_buttons_and_escaped_descriptions() {
        let tokens = [
            token("aaaa", false, "<script>alert(1)</script>"),
            token("bbbb", true, "old"),
        ];
        let html = accounts(&admin(), None, &[], JoinTokens::Listed(&tokens), 1_500).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains(r#"<tr data-token="aaaa">"#), "{html}");
        assert!(html.contains("2 of 5"), "{html}");
        assert!(
            html.contains(r#"action="/accounts/join-tokens/revoke""#),
            "{html}"
        );
        assert!(html.contains(r#"name="id" value="aaaa""#), "{html}");
        assert!(
            !html.contains(r#"name="id" value="bbbb""#),
            "a revoked token has no Revoke: {html}"
        );
        let failed = accounts(
            &admin(),
            None,
            &[],
            JoinTokens::Unavailable("auth: <down>"),
            0,
        )
        .into_string();
        assert!(
            failed.contains("Join tokens cannot be listed: auth: &lt;down&gt;"),
            "{failed}"
        );
    }

    #[test]
    fn a_join_tokens_state_is_judged_at_the_time_shown() {
        assert_eq!(join_token_state(&token("a", false, ""), 1_999), "active");
        assert_eq!(join_token_state(&token("a", false, ""), 2_000), "expired");
        assert_eq!(join_token_state(&token("a", true, ""), 0), "revoked");
        let spent = auth_pb::JoinToken {
            uses_left: 0,
            ..token("a", false, "")
        };
        assert_eq!(join_token_state(&spent, 0), "used up");
    }

    #[test]
    fn filters_are_encoded_into_the_live_url() {
        assert_eq!(urlencode("a b&c"), "a%20b%26c");
    }
}
