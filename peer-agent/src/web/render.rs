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

/// Rows on one page of the Files table.
pub const FILES_PAGE_ROWS: u32 = 100;

/// The Files page's address (`/files?...`): name filter, owner and kind
/// filters, order and page. The live feed takes the same query, plus `v`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FilesQuery {
    /// The name filter.
    #[serde(default)]
    pub q: String,
    /// Only this user's entries (exact username); empty: anyone's.
    #[serde(default)]
    pub owner: String,
    /// `file` or `folder`; anything else: both.
    #[serde(default)]
    pub kind: String,
    /// `name`, `size`, `added` or `holders`; anything else: newest first.
    #[serde(default)]
    pub sort: String,
    /// `desc` for largest (Z, newest, most held) first.
    #[serde(default)]
    pub dir: String,
    /// The page token of the page shown (empty: the first page).
    #[serde(default)]
    pub after: String,
    /// The number of the page shown, for "page 3 of 300".
    #[serde(default)]
    pub n: Option<u32>,
    /// What the page already shows ([`version`]).
    #[serde(default)]
    pub v: String,
}

impl FilesQuery {
    fn sort_key(&self) -> index_pb::FileSort {
        match self.sort.as_str() {
            "name" => index_pb::FileSort::Name,
            "size" => index_pb::FileSort::Size,
            "added" => index_pb::FileSort::Added,
            "holders" => index_pb::FileSort::Holders,
            _ => index_pb::FileSort::Unspecified,
        }
    }

    fn descending(&self) -> bool {
        self.dir == "desc"
    }

    /// The page number shown (1 for the first).
    pub fn page_number(&self) -> u32 {
        if self.after.is_empty() {
            1
        } else {
            self.n.unwrap_or(2).max(2)
        }
    }

    /// The listing this address shows: one page of [`FILES_PAGE_ROWS`],
    /// counted.
    pub fn request(&self) -> pb::ListFilesRequest {
        pb::ListFilesRequest {
            name_contains: self.q.trim().to_string(),
            page_size: FILES_PAGE_ROWS,
            page_token: self.after.clone(),
            sort: self.sort_key() as i32,
            descending: self.descending(),
            owner_name: self.owner.trim().to_string(),
            kind: match self.kind.as_str() {
                "file" => Some(index_pb::EntryKind::File as i32),
                "folder" => Some(index_pb::EntryKind::Folder as i32),
                _ => None,
            },
            include_total: true,
        }
    }

    /// The query string of this address with another order and page.
    fn query_string(&self, sort: &str, dir: &str, after: &str, n: u32) -> String {
        let mut pairs = vec![
            ("q", self.q.as_str()),
            ("owner", self.owner.as_str()),
            ("kind", self.kind.as_str()),
            ("sort", sort),
            ("dir", dir),
            ("after", after),
        ];
        pairs.retain(|(_, v)| !v.is_empty());
        let n = n.to_string();
        if !after.is_empty() {
            pairs.push(("n", &n));
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// `/files` sorted by `sort` (the same column again turns the order
    /// round), from the first page.
    fn sorted_by(&self, sort: &str) -> String {
        let dir = if self.sort == sort && !self.descending() {
            "desc"
        } else {
            ""
        };
        format!("/files?{}", self.query_string(sort, dir, "", 1))
    }

    /// `/files` at another page of the same listing.
    fn at_page(&self, after: &str, n: u32) -> String {
        format!(
            "/files?{}",
            self.query_string(&self.sort, &self.dir, after, n)
        )
    }
}

/// One page of the Files table as listed.
#[derive(Debug, Clone, Default)]
pub struct FilesListing {
    /// The rows.
    pub files: Vec<pb::NetworkFile>,
    /// The next page's token; empty on the last page.
    pub next_page_token: String,
    /// Entries matching the filters, when the index counted them.
    pub total_count: Option<u64>,
}

/// `/files`: the filters, one sortable page of the network's entries
/// that the live feed keeps current, and the way to the other pages.
pub fn files(
    viewer: &Viewer,
    flash: Option<Flash>,
    query: &FilesQuery,
    listing: &FilesListing,
) -> Markup {
    let rows = file_rows(viewer, &listing.files);
    let live = format!(
        "/events/files?{}&v={}",
        query.query_string(&query.sort, &query.dir, &query.after, query.page_number()),
        version(&rows)
    );
    let page = query.page_number();
    let pages = listing
        .total_count
        .map(|t| t.div_ceil(u64::from(FILES_PAGE_ROWS)).max(1));
    let header = |label: &str, sort: &str| {
        let aria = match (query.sort == sort, query.descending()) {
            (false, _) => None,
            (true, false) => Some("ascending"),
            (true, true) => Some("descending"),
        };
        html! {
            th scope="col" aria-sort=[aria] {
                a.sort href=(query.sorted_by(sort)) data-sort=(sort) { (label) }
            }
        }
    };
    layout(
        Page::Files,
        Some(viewer),
        flash,
        html! {
            form.filter method="get" action="/files" role="search" {
                div.field {
                    label for="q" { "Name" }
                    input #q name="q" type="search" value=(query.q);
                }
                div.field {
                    label for="owner" { "Owner" }
                    input #owner name="owner" value=(query.owner) placeholder="anyone";
                }
                div.field {
                    label for="kind" { "Type" }
                    select #kind name="kind" {
                        option value="" selected[query.kind.is_empty()] { "Files and folders" }
                        option value="file" selected[query.kind == "file"] { "Files" }
                        option value="folder" selected[query.kind == "folder"] { "Folders" }
                    }
                }
                @if !query.sort.is_empty() {
                    input type="hidden" name="sort" value=(query.sort);
                }
                @if !query.dir.is_empty() {
                    input type="hidden" name="dir" value=(query.dir);
                }
                button type="submit" { "Search" }
            }
            p.live-note #files-live aria-live="polite" { "Updates live." }
            p.pager #files-pager {
                "Page " (page)
                @if let Some(pages) = pages { " of " (pages.max(u64::from(page))) }
                @if let Some(total) = listing.total_count {
                    " · " span #files-total { (total) } " in all"
                }
                @if page > 1 {
                    " · " a #first-page href=(query.at_page("", 1)) { "First page" }
                }
                @if !listing.next_page_token.is_empty() {
                    " · " a #next-page rel="next" href=(query.at_page(&listing.next_page_token, page + 1)) { "Next page" }
                }
            }
            div.table-wrap {
                table #files {
                    caption.visually-hidden { "Files in the network" }
                    thead {
                        tr {
                            (header("Name", "name"))
                            (header("Size", "size"))
                            th scope="col" { "Type" }
                            th scope="col" { "Owner" }
                            (header("Added", "added"))
                            th scope="col" aria-sort=[(query.sort == "holders").then_some(if query.descending() { "descending" } else { "ascending" })] {
                                a.sort href=(query.sorted_by("holders")) data-sort="holders" {
                                    abbr title="online holders / complete copies" { "Holders" }
                                }
                            }
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

/// The Files table's rows (also what the live feed sends when it lists
/// the page again).
pub fn file_rows(viewer: &Viewer, files: &[pb::NetworkFile]) -> Markup {
    html! {
        @if files.is_empty() {
            tr.empty { td colspan="8" { "No files here. Share one on the Share page, or change the search." } }
        }
        @for file in files {
            (file_row(viewer, file, None))
        }
    }
}

/// One row of the Files table; with `after` (the live feed's added or
/// moved row), the id of the row it follows (empty: the first).
pub fn file_row(viewer: &Viewer, file: &pb::NetworkFile, after: Option<&str>) -> Markup {
    let Some(info) = &file.file else {
        return html! {};
    };
    let state = pb::LocalState::try_from(file.local_state).unwrap_or(pb::LocalState::None);
    let mine = info.owner_name == viewer.username;
    let folder = info.kind == index_pb::EntryKind::Folder as i32;
    html! {
        tr data-file-id=(info.file_id) data-after=[after] {
            td.name { (entry_name(info)) }
            td { (human(info.size_bytes)) }
            td.kind {
                @if folder { "Folder" } @else { (info.mime_type) }
            }
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

/// An entry's name in a listing: a folder's links to its page.
fn entry_name(info: &index_pb::FileInfo) -> Markup {
    html! {
        @if info.kind == index_pb::EntryKind::Folder as i32 {
            a href=(format!("/folder?id={}", urlencode(&info.file_id))) { (info.name) "/" }
            " " small.hint { (info.entry_count) " files" }
        } @else {
            (info.name)
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
            section.card aria-labelledby="upload-folder-h" {
                h2 #upload-folder-h { "Upload a folder from this browser" }
                p.hint { "Every file in the folder is streamed to " code { (uploads_dir) } ", then the folder is shared as one entry. Browsers do not send empty folders." }
                form #upload-folder method="post" action="/share/upload-folder" enctype="multipart/form-data" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    p {
                        label for="upload-folder-files" { "Folder" }
                        input #upload-folder-files name="file" type="file" webkitdirectory multiple required;
                    }
                    button type="submit" { "Upload and share the folder" }
                }
            }
            section.card aria-labelledby="path-h" {
                h2 #path-h { "Share a file or folder on the agent's machine" }
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

/// The page of one folder of the network at `listing.path` inside it:
/// breadcrumbs, its subfolders and files (`per_page` from `offset`), and a
/// Download button for the folder, each subfolder and each file.
pub fn folder(
    viewer: &Viewer,
    flash: Option<Flash>,
    listing: &pb::ListFolderResponse,
    offset: u32,
    per_page: u32,
) -> Markup {
    let info = listing
        .folder
        .as_ref()
        .and_then(|f| f.file.clone())
        .unwrap_or_default();
    let id = info.file_id.clone();
    let here = |path: &str| format!("/folder?id={}&path={}", urlencode(&id), urlencode(path));
    let inner = |name: &str| {
        if listing.path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", listing.path)
        }
    };
    let mut crumbs = vec![(info.name.clone(), String::new())];
    let mut walked = String::new();
    for part in listing.path.split('/').filter(|p| !p.is_empty()) {
        walked = if walked.is_empty() {
            part.to_string()
        } else {
            format!("{walked}/{part}")
        };
        crumbs.push((part.to_string(), walked.clone()));
    }
    let shown = listing.entries.len() as u32;
    let get = |path: &str, label: String| {
        let target = if path.is_empty() {
            id.clone()
        } else {
            format!("{id}/{path}")
        };
        html! {
            form.inline.download method="post" action="/files/download" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="file" value=(target);
                button type="submit" aria-label=(label) { "Download" }
            }
        }
    };
    layout(
        Page::Files,
        Some(viewer),
        flash,
        html! {
            nav aria-label="Breadcrumb" {
                ol.breadcrumbs {
                    li { a href="/files" { "Files" } }
                    @for (i, (name, path)) in crumbs.iter().enumerate() {
                        li {
                            @if i + 1 == crumbs.len() {
                                span aria-current="page" { (name) }
                            } @else {
                                a href=(here(path)) { (name) }
                            }
                        }
                    }
                }
            }
            div.folder-head {
                (get(&listing.path, format!("Download {}", crumbs.last().map_or("", |c| c.0.as_str()))))
                span.hint { (listing.total) " entries here; " (human(info.size_bytes)) " in the whole folder." }
            }
            div.table-wrap {
                table #folder {
                    caption.visually-hidden { "Inside " (info.name) }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Size" } th scope="col" { "Files" } th scope="col" { "Actions" } } }
                    tbody {
                        @for entry in &listing.entries {
                            @let path = inner(&entry.name);
                            tr data-entry=(entry.name) {
                                td {
                                    @if entry.is_folder {
                                        a href=(here(&path)) { (entry.name) "/" }
                                    } @else {
                                        (entry.name)
                                    }
                                }
                                td { (human(entry.size_bytes)) }
                                td { (entry.file_count) }
                                td { (get(&path, format!("Download {}", entry.name))) }
                            }
                        }
                    }
                }
            }
            nav aria-label="Pages" {
                @if offset > 0 {
                    a href=(format!("{}&offset={}", here(&listing.path), offset.saturating_sub(per_page))) { "Previous page" }
                    " "
                }
                @if offset + shown < listing.total {
                    a href=(format!("{}&offset={}", here(&listing.path), offset + shown)) { "Next page" }
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
