//! What the client shows, as plain serialisable structs: the generated proto
//! types stop here. Each view renders either as JSON (`--json`) or as text
//! through `format`.

use std::time::Duration;

use p2p_proto::agent::v1 as agent;
use p2p_proto::auth::v1 as auth;
use p2p_proto::index::v1 as index;
use serde::Serialize;

use crate::format::{self, Align, Table};

/// One entry inside a folder, as `p2p ls NAME/` shows it.
#[derive(Debug, Serialize)]
pub struct FolderRow {
    pub name: String,
    pub is_folder: bool,
    pub size_bytes: u64,
    /// Files in it, subfolders included; 1 for a file.
    pub file_count: u32,
}

impl FolderRow {
    /// The row for one `FolderEntry` from the agent.
    pub fn from_proto(entry: &agent::FolderEntry) -> Self {
        Self {
            name: entry.name.clone(),
            is_folder: entry.is_folder,
            size_bytes: entry.size_bytes,
            file_count: entry.file_count,
        }
    }

    /// One line for people: size, then the name (a folder's ends in `/`
    /// and says how many files it holds).
    pub fn line(&self) -> String {
        let size = format::bytes(self.size_bytes);
        if self.is_folder {
            let files = if self.file_count == 1 {
                "file"
            } else {
                "files"
            };
            format!("{size:>10}  {}/  ({} {files})", self.name, self.file_count)
        } else {
            format!("{size:>10}  {}", self.name)
        }
    }
}

/// One network file as `p2p ls` shows it.
#[derive(Debug, Serialize)]
pub struct FileRow {
    pub file_id: String,
    pub name: String,
    pub size_bytes: u64,
    pub mime_type: String,
    pub owner: String,
    pub added_at_ms: i64,
    pub online_holders: u32,
    pub complete_copies: u32,
    /// `none`, `downloading`, `partial` or `complete`.
    pub local_state: &'static str,
    pub local_bytes: u64,
    pub local_path: String,
    /// Why the local copy is not offered ("changed since shared: share it
    /// again"); empty when nothing is wrong.
    pub local_problem: String,
}

impl FileRow {
    /// The row for one `NetworkFile` from the agent.
    pub fn from_proto(f: agent::NetworkFile) -> Self {
        let local_state = match f.local_state() {
            agent::LocalState::Downloading => "downloading",
            agent::LocalState::Partial => "partial",
            agent::LocalState::Complete => "complete",
            agent::LocalState::None | agent::LocalState::Unspecified => "none",
        };
        let info = f.file.unwrap_or_default();
        Self {
            file_id: info.file_id,
            name: info.name,
            size_bytes: info.size_bytes,
            mime_type: info.mime_type,
            owner: info.owner_name,
            added_at_ms: info.added_at_ms,
            online_holders: info.online_holders,
            complete_copies: info.complete_copies,
            local_state,
            local_bytes: f.local_bytes,
            local_path: f.local_path,
            local_problem: f.local_problem,
        }
    }

    fn local(&self) -> String {
        if !self.local_problem.is_empty() {
            return self.local_problem.clone();
        }
        match self.local_state {
            "complete" => "100%".to_string(),
            "downloading" => format!("{} ↓", format::percent(self.local_bytes, self.size_bytes)),
            _ => format::percent(self.local_bytes, self.size_bytes),
        }
    }
}

/// The `p2p ls` table.
pub fn files_table(rows: &[FileRow]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("SIZE", Align::Right),
        ("TYPE", Align::Left),
        ("OWNER", Align::Left),
        ("ADDED", Align::Left),
        ("HOLDERS", Align::Right),
        ("LOCAL", Align::Right),
        ("ID", Align::Left),
    ]);
    for row in rows {
        table.row(vec![
            row.name.clone(),
            format::bytes(row.size_bytes),
            row.mime_type.clone(),
            row.owner.clone(),
            format::local_time(row.added_at_ms),
            format!("{}/{}", row.online_holders, row.complete_copies),
            row.local(),
            format::short_id(&row.file_id).to_string(),
        ]);
    }
    table.render()
}

/// A file as shared or published.
#[derive(Debug, Serialize)]
pub struct SharedFile {
    pub path: String,
    pub file_id: String,
    pub name: String,
    pub size_bytes: u64,
    /// Identical content was already in the network.
    pub already_published: bool,
}

impl SharedFile {
    /// From the last `ShareProgress` message of a share.
    pub fn from_proto(path: String, info: index::FileInfo, already_published: bool) -> Self {
        Self {
            path,
            file_id: info.file_id,
            name: info.name,
            size_bytes: info.size_bytes,
            already_published,
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let note = if self.already_published {
            " (already in the network)"
        } else {
            ""
        };
        format!(
            "shared {} ({}) as {}{note}",
            self.name,
            format::bytes(self.size_bytes),
            self.file_id
        )
    }
}

/// One progress event of a download, as JSON lines show it.
#[derive(Debug, Serialize)]
pub struct DownloadEvent {
    /// Always `"progress"` or `"done"`, so line readers can switch on it.
    pub event: &'static str,
    /// `locating`, `downloading`, `verifying` or `done`.
    pub stage: &'static str,
    pub file_id: String,
    pub name: String,
    pub total_bytes: u64,
    pub have_bytes: u64,
    pub rate_bps: u64,
    pub sources_in_use: u32,
    pub eta_ms: u64,
    pub resumed_chunks: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub final_path: String,
}

impl DownloadEvent {
    /// From one `DownloadProgress` message.
    pub fn from_proto(p: agent::DownloadProgress) -> Self {
        let stage = match p.stage() {
            agent::DownloadStage::Locating | agent::DownloadStage::Unspecified => "locating",
            agent::DownloadStage::Downloading => "downloading",
            agent::DownloadStage::Verifying => "verifying",
            agent::DownloadStage::Done => "done",
        };
        Self {
            event: if stage == "done" { "done" } else { "progress" },
            stage,
            file_id: p.file_id,
            name: p.name,
            total_bytes: p.total_bytes,
            have_bytes: p.have_bytes,
            rate_bps: p.rate_bps,
            sources_in_use: p.sources_in_use,
            eta_ms: p.eta_ms,
            resumed_chunks: p.resumed_chunks,
            final_path: p.final_path,
        }
    }

    /// Whether the file is in place.
    pub fn is_done(&self) -> bool {
        self.event == "done"
    }

    /// The progress bar's message: rate, ETA and sources.
    pub fn bar_message(&self) -> String {
        let eta = if self.eta_ms == 0 {
            "-".to_string()
        } else {
            format::duration(Duration::from_millis(self.eta_ms))
        };
        let sources = match self.sources_in_use {
            1 => "1 source".to_string(),
            n => format!("{n} sources"),
        };
        match self.stage {
            "locating" => "locating sources…".to_string(),
            "verifying" => "verifying…".to_string(),
            _ => format!("{}  ETA {eta}  {sources}", format::rate(self.rate_bps)),
        }
    }
}

/// One peer as `p2p peers` shows it.
#[derive(Debug, Serialize)]
pub struct PeerRow {
    pub peer_id: String,
    pub username: String,
    pub address: String,
    /// `online` or `offline`.
    pub state: &'static str,
    pub active_uploads: u32,
    pub max_uploads: u32,
    pub upload_rate_bps: u64,
    pub max_upload_rate_bps: u64,
    pub last_seen_ms: i64,
    pub complete_files: u32,
    pub agent_version: String,
}

impl PeerRow {
    /// From one index `Peer`.
    pub fn from_proto(p: index::Peer) -> Self {
        let state = match p.state() {
            index::PeerState::Online => "online",
            _ => "offline",
        };
        let load = p.load.unwrap_or_default();
        Self {
            peer_id: p.peer_id,
            username: p.username,
            address: p.advertise_addr,
            state,
            active_uploads: load.active_uploads,
            max_uploads: load.max_uploads,
            upload_rate_bps: load.upload_rate_bps,
            max_upload_rate_bps: load.max_upload_rate_bps,
            last_seen_ms: p.last_seen_ms,
            complete_files: p.complete_files,
            agent_version: p.agent_version,
        }
    }
}

/// The `p2p peers` table.
pub fn peers_table(rows: &[PeerRow], now_ms: i64) -> String {
    let mut table = Table::new(&[
        ("PEER", Align::Left),
        ("USER", Align::Left),
        ("ADDRESS", Align::Left),
        ("STATE", Align::Left),
        ("UPLOADS", Align::Right),
        ("RATE", Align::Right),
        ("LAST SEEN", Align::Left),
    ]);
    for row in rows {
        let uploads = if row.max_uploads == 0 {
            row.active_uploads.to_string()
        } else {
            format!("{}/{}", row.active_uploads, row.max_uploads)
        };
        let rate = if row.max_upload_rate_bps == 0 {
            format::rate(row.upload_rate_bps)
        } else {
            format!(
                "{} of {}",
                format::rate(row.upload_rate_bps),
                format::rate(row.max_upload_rate_bps)
            )
        };
        table.row(vec![
            format::short_id(&row.peer_id).to_string(),
            row.username.clone(),
            row.address.clone(),
            row.state.to_string(),
            uploads,
            rate,
            format::ago(row.last_seen_ms, now_ms),
        ]);
    }
    table.render()
}

/// An account.
#[derive(Debug, Serialize)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    /// `admin` or `user`.
    pub role: &'static str,
    pub disabled: bool,
    pub created_at_ms: i64,
}

impl UserRow {
    /// From an auth `User`.
    pub fn from_proto(u: auth::User) -> Self {
        let role = match u.role() {
            auth::Role::Admin => "admin",
            _ => "user",
        };
        Self {
            id: u.id,
            username: u.username,
            role,
            disabled: u.disabled,
            created_at_ms: u.created_at_ms,
        }
    }
}

/// The `p2p users ls` table.
pub fn users_table(rows: &[UserRow]) -> String {
    let mut table = Table::new(&[
        ("USER", Align::Left),
        ("ROLE", Align::Left),
        ("STATE", Align::Left),
        ("CREATED", Align::Left),
        ("ID", Align::Left),
    ]);
    for row in rows {
        table.row(vec![
            row.username.clone(),
            row.role.to_string(),
            if row.disabled { "disabled" } else { "enabled" }.to_string(),
            format::local_time(row.created_at_ms),
            row.id.clone(),
        ]);
    }
    table.render()
}

/// A join token as `p2p join-tokens` and `p2p invite` show it. Never its
/// secret: that is only in an invite's text.
#[derive(Debug, Serialize)]
pub struct JoinTokenRow {
    pub id: String,
    /// The account machines joined with it belong to.
    pub username: String,
    pub uses: u32,
    pub uses_left: u32,
    pub expires_at_ms: i64,
    pub revoked: bool,
    /// `active`, `revoked`, `expired` or `used up`, as of `now_ms`.
    pub state: &'static str,
    pub description: String,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl JoinTokenRow {
    /// From an auth `JoinToken`, its state judged at `now_ms`.
    pub fn from_proto(t: auth::JoinToken, now_ms: i64) -> Self {
        let state = if t.revoked {
            "revoked"
        } else if t.expires_at_ms <= now_ms {
            "expired"
        } else if t.uses_left == 0 {
            "used up"
        } else {
            "active"
        };
        Self {
            id: t.id,
            username: t.username,
            uses: t.uses,
            uses_left: t.uses_left,
            expires_at_ms: t.expires_at_ms,
            revoked: t.revoked,
            state,
            description: t.description,
            created_by: t.created_by,
            created_at_ms: t.created_at_ms,
        }
    }
}

/// The `p2p join-tokens` table.
pub fn join_tokens_table(rows: &[JoinTokenRow]) -> String {
    if rows.is_empty() {
        return "no join tokens: make one with `p2p invite --token-for USER`\n".to_string();
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("ACCOUNT", Align::Left),
        ("USES LEFT", Align::Right),
        ("EXPIRES", Align::Left),
        ("STATE", Align::Left),
        ("DESCRIPTION", Align::Left),
    ]);
    for row in rows {
        table.row(vec![
            row.id.clone(),
            row.username.clone(),
            format!("{}/{}", row.uses_left, row.uses),
            format::local_time(row.expires_at_ms),
            row.state.to_string(),
            row.description.clone(),
        ]);
    }
    table.render()
}

/// `p2p invite`: the invite and what to do with it.
#[derive(Debug, Serialize)]
pub struct InviteView {
    /// The text to hand over (holds the join token's secret, if any).
    pub invite: String,
    /// Where it tells the new machine auth-svc is.
    pub server: String,
    pub ca_fingerprint: String,
    /// The join token made with it, if any.
    pub token: Option<JoinTokenRow>,
}

impl InviteView {
    pub fn from_proto(invite: agent::Invite, now_ms: i64) -> Self {
        Self {
            invite: invite.invite,
            server: invite.server,
            ca_fingerprint: invite.ca_fingerprint,
            token: invite.token.map(|t| JoinTokenRow::from_proto(t, now_ms)),
        }
    }

    pub fn text(&self) -> String {
        let mut text = format!(
            "On the new machine, run:\n\n  p2p join '{}'\n\n\
             It reaches auth-svc at {} and trusts only the CA {}.\n",
            self.invite, self.server, self.ca_fingerprint
        );
        match &self.token {
            Some(token) => text.push_str(&format!(
                "It carries join token {} for {}: good for {} machine{} until {}. \
                 This is the only time it is shown: keep it like a password, and \
                 revoke it with `p2p join-tokens revoke {}` if it leaks.\n",
                token.id,
                token.username,
                token.uses,
                if token.uses == 1 { "" } else { "s" },
                format::local_time(token.expires_at_ms),
                token.id
            )),
            None => text.push_str(
                "It carries no join token: the person there logs in with their own account's \
                 password (`p2p invite --token-for USER` makes one for an unattended machine).\n",
            ),
        }
        if loopback_host(&self.server) {
            text.push_str(&format!(
                "Warning: {} is this machine only; no other machine reaches auth-svc there. \
                 Make the invite on an agent whose --auth-url is an address of the LAN.\n",
                self.server
            ));
        }
        text
    }
}

/// Whether a `host:port` names this machine only.
fn loopback_host(server: &str) -> bool {
    let host = server
        .rsplit_once(':')
        .map_or(server, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Transfer counters of an agent.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    pub chunks_served: u64,
    pub chunks_downloaded: u64,
    pub chunks_rejected: u64,
    pub chunks_from_partial_sources: u64,
    pub chunks_served_while_downloading: u64,
    pub chunks_served_framed: u64,
    pub holdings_streams_served: u64,
    pub holdings_streams_framed: u64,
}

/// `p2p web`: the one-time link into the agent's web app.
#[derive(Debug, Serialize)]
pub struct WebLinkView {
    pub url: String,
    pub expires_in_seconds: u32,
}

impl WebLinkView {
    pub fn from_proto(r: agent::OpenWebResponse) -> Self {
        Self {
            url: r.url,
            expires_in_seconds: r.expires_in_seconds,
        }
    }

    pub fn text(&self) -> String {
        format!(
            "Open this link in a browser on this machine. It works once, within {}, and then \
             asks for the password of the account the agent is logged in as:\n\n  {}\n",
            format::duration(Duration::from_secs(self.expires_in_seconds.into())),
            self.url
        )
    }
}

/// `p2p status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub agent: String,
    pub logged_in: bool,
    pub user: Option<UserRow>,
    /// Why the agent's own (unattended) login has not worked yet and when
    /// it retries; `None` when it is not trying.
    pub login_error: Option<String>,
    pub peer_id: String,
    pub advertise_addr: String,
    pub index_url: String,
    pub auth_url: String,
    /// The deployment's CA, when the agent joined with `p2p join`.
    pub ca_fingerprint: String,
    /// What this agent's certificate names, and until when (ms).
    pub cert_address: String,
    pub cert_not_after_ms: i64,
    pub data_dir: String,
    pub index_reachable: bool,
    pub active_downloads: u32,
    pub shared_files: u32,
    pub active_uploads: u32,
    pub upload_rate_bps: u64,
    pub max_upload_rate_bps: u64,
    pub max_uploads: u32,
    pub free_disk_bytes: u64,
    /// Partial downloads kept and the verified bytes they hold.
    pub partial_downloads: u32,
    pub partial_bytes: u64,
    /// Held files that changed on disk and are no longer offered.
    pub problems: Vec<HeldFileProblem>,
    pub counters: Counters,
}

/// A held file that no longer matches what was shared or downloaded.
#[derive(Debug, Serialize)]
pub struct HeldFileProblem {
    pub file_id: String,
    pub name: String,
    pub path: String,
    pub problem: String,
}

impl StatusView {
    /// From the agent's `StatusResponse`.
    pub fn from_proto(agent: String, s: agent::StatusResponse) -> Self {
        let load = s.load.unwrap_or_default();
        let c = s.counters.unwrap_or_default();
        Self {
            agent,
            logged_in: s.logged_in,
            user: s.user.map(UserRow::from_proto),
            login_error: Some(s.login_error).filter(|e| !e.is_empty()),
            peer_id: s.peer_id,
            advertise_addr: s.advertise_addr,
            index_url: s.index_url,
            auth_url: s.auth_url,
            ca_fingerprint: s.ca_fingerprint,
            cert_address: s.cert_address,
            cert_not_after_ms: s.cert_not_after_ms,
            data_dir: s.data_dir,
            index_reachable: s.index_reachable,
            active_downloads: s.active_downloads,
            shared_files: s.shared_files,
            active_uploads: load.active_uploads,
            upload_rate_bps: load.upload_rate_bps,
            max_upload_rate_bps: load.max_upload_rate_bps,
            max_uploads: load.max_uploads,
            free_disk_bytes: if s.free_disk_bytes > 0 {
                s.free_disk_bytes
            } else {
                load.free_disk_bytes
            },
            partial_downloads: s.partial_downloads,
            partial_bytes: s.partial_bytes,
            problems: s
                .held_file_problems
                .into_iter()
                .map(|p| HeldFileProblem {
                    file_id: p.file_id,
                    name: p.name,
                    path: p.path,
                    problem: p.problem,
                })
                .collect(),
            counters: Counters {
                bytes_uploaded: c.bytes_uploaded,
                bytes_downloaded: c.bytes_downloaded,
                chunks_served: c.chunks_served,
                chunks_downloaded: c.chunks_downloaded,
                chunks_rejected: c.chunks_rejected,
                chunks_from_partial_sources: c.chunks_from_partial_sources,
                chunks_served_while_downloading: c.chunks_served_while_downloading,
                chunks_served_framed: c.chunks_served_framed,
                holdings_streams_served: c.holdings_streams_served,
                holdings_streams_framed: c.holdings_streams_framed,
            },
        }
    }

    /// Aligned `key: value` lines for people.
    pub fn text(&self) -> String {
        let session = match (&self.user, self.logged_in, &self.login_error) {
            (Some(u), true, _) => format!("logged in as {} ({})", u.username, u.role),
            (_, _, Some(why)) => format!("not logged in: {why}"),
            _ => "not logged in: run `p2p login`".to_string(),
        };
        let limit = |v: u64| {
            if v == 0 {
                "unlimited".to_string()
            } else {
                format::rate(v)
            }
        };
        let c = &self.counters;
        let mut lines = vec![
            ("agent", self.agent.clone()),
            ("session", session),
            ("peer id", or_dash(&self.peer_id)),
            ("advertised at", or_dash(&self.advertise_addr)),
            (
                "index",
                format!(
                    "{} ({})",
                    or_dash(&self.index_url),
                    if self.index_reachable {
                        "reachable"
                    } else {
                        "unreachable"
                    }
                ),
            ),
            ("auth", or_dash(&self.auth_url)),
        ];
        if !self.ca_fingerprint.is_empty() {
            lines.push(("deployment CA", self.ca_fingerprint.clone()));
            let expired = self.cert_not_after_ms <= p2p_services::time::now_ms();
            lines.push((
                "certificate",
                format!(
                    "for {}, until {} ({})",
                    or_dash(&self.cert_address),
                    format::local_time(self.cert_not_after_ms),
                    if expired {
                        "EXPIRED: run `p2p join` again"
                    } else {
                        "renews by itself"
                    }
                ),
            ));
        }
        lines.extend([
            ("data dir", or_dash(&self.data_dir)),
            ("free disk", format::bytes(self.free_disk_bytes)),
            (
                "partials",
                format!(
                    "{} holding {}",
                    self.partial_downloads,
                    format::bytes(self.partial_bytes)
                ),
            ),
            ("shared files", self.shared_files.to_string()),
            ("downloads", self.active_downloads.to_string()),
            (
                "uploads",
                if self.max_uploads == 0 {
                    format!("{} (no cap)", self.active_uploads)
                } else {
                    format!("{} of {}", self.active_uploads, self.max_uploads)
                },
            ),
            (
                "upload rate",
                format!(
                    "{} (limit {})",
                    format::rate(self.upload_rate_bps),
                    limit(self.max_upload_rate_bps)
                ),
            ),
            (
                "uploaded",
                format!(
                    "{} in {} chunks ({} while downloading, {} as frames)",
                    format::bytes(c.bytes_uploaded),
                    c.chunks_served,
                    c.chunks_served_while_downloading,
                    c.chunks_served_framed
                ),
            ),
            (
                "downloaded",
                format!(
                    "{} in {} chunks ({} from partial holders)",
                    format::bytes(c.bytes_downloaded),
                    c.chunks_downloaded,
                    c.chunks_from_partial_sources
                ),
            ),
            ("rejected chunks", c.chunks_rejected.to_string()),
            (
                "holdings streams",
                format!(
                    "{} served ({} as frames)",
                    c.holdings_streams_served, c.holdings_streams_framed
                ),
            ),
        ]);
        for p in &self.problems {
            lines.push((
                "not offered",
                format!("{} ({}): {}", p.name, p.path, p.problem),
            ));
        }
        let width = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        lines
            .iter()
            .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
            .collect()
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network_file(state: agent::LocalState, local_bytes: u64) -> agent::NetworkFile {
        agent::NetworkFile {
            file: Some(index::FileInfo {
                file_id: "00112233445566778899aabbccddeeff".into(),
                name: "talk.mp4".into(),
                size_bytes: 2048,
                mime_type: "video/mp4".into(),
                owner_name: "alice".into(),
                online_holders: 3,
                complete_copies: 2,
                ..Default::default()
            }),
            local_state: state as i32,
            local_bytes,
            local_path: String::new(),
            local_problem: String::new(),
        }
    }

    #[test]
    fn ls_table_shows_holders_local_share_and_short_id() {
        let rows = vec![
            FileRow::from_proto(network_file(agent::LocalState::Partial, 512)),
            FileRow::from_proto(network_file(agent::LocalState::None, 0)),
            FileRow::from_proto(network_file(agent::LocalState::Complete, 2048)),
        ];
        let text = files_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        for header in ["SIZE", "TYPE", "OWNER", "ADDED", "HOLDERS", "LOCAL", "ID"] {
            assert!(
                lines[0].contains(header),
                "{header} missing from {}",
                lines[0]
            );
        }
        assert!(lines[1].contains("2.0 KiB"));
        assert!(lines[1].contains("3/2"));
        assert!(lines[1].contains("25%"));
        assert!(lines[1].ends_with("001122334455"));
        assert!(lines[2].contains("  -  "));
        assert!(lines[3].contains("100%"));
    }

    #[test]
    fn file_rows_serialise_for_scripts() {
        let row = FileRow::from_proto(network_file(agent::LocalState::Downloading, 1));
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["local_state"], "downloading");
        assert_eq!(json["file_id"], "00112233445566778899aabbccddeeff");
        assert_eq!(json["online_holders"], 3);
    }

    #[test]
    fn download_events_mark_the_end() {
        let done = DownloadEvent::from_proto(agent::DownloadProgress {
            stage: agent::DownloadStage::Done as i32,
            final_path: "/x".into(),
            ..Default::default()
        });
        assert!(done.is_done());
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["event"], "done");
        assert_eq!(json["final_path"], "/x");

        let running = DownloadEvent::from_proto(agent::DownloadProgress {
            stage: agent::DownloadStage::Downloading as i32,
            rate_bps: 1024 * 1024,
            sources_in_use: 2,
            eta_ms: 65_000,
            ..Default::default()
        });
        assert!(!running.is_done());
        assert_eq!(running.bar_message(), "1.0 MiB/s  ETA 1m 05s  2 sources");
    }

    #[test]
    fn peers_table_shows_limits_only_when_set() {
        let peer = |max_rate| {
            PeerRow::from_proto(index::Peer {
                peer_id: "peer-0123456789abcdef".into(),
                username: "bob".into(),
                advertise_addr: "10.0.0.2:50053".into(),
                state: index::PeerState::Online as i32,
                load: Some(index::PeerLoad {
                    active_uploads: 1,
                    max_uploads: 4,
                    upload_rate_bps: 1024,
                    max_upload_rate_bps: max_rate,
                    ..Default::default()
                }),
                last_seen_ms: 1_000,
                ..Default::default()
            })
        };
        let text = peers_table(&[peer(0), peer(2048)], 4_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("1/4"));
        assert!(lines[1].contains("1.0 KiB/s"));
        assert!(!lines[1].contains(" of "));
        assert!(lines[2].contains("1.0 KiB/s of 2.0 KiB/s"));
        assert!(lines[2].ends_with("3s ago"));
    }

    #[test]
    fn status_text_says_why_the_agents_own_login_fails() {
        let view = StatusView::from_proto(
            "/d/control.sock".into(),
            agent::StatusResponse {
                login_error: "auth service unreachable; retrying in 4 s".into(),
                ..Default::default()
            },
        );
        assert!(
            view.text()
                .contains("not logged in: auth service unreachable; retrying in 4 s")
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json["login_error"],
            "auth service unreachable; retrying in 4 s"
        );
    }

    #[test]
    fn status_text_says_to_log_in_when_logged_out() {
        let view = StatusView::from_proto("127.0.0.1:1".into(), agent::StatusResponse::default());
        assert_eq!(view.login_error, None);
        let text = view.text();
        assert!(text.contains("not logged in: run `p2p login`"));
        assert!(text.contains("unreachable"));
        let value_columns: Vec<usize> = text
            .lines()
            .map(|line| {
                let after = line.find(':').unwrap() + 1;
                after + line[after..].len() - line[after..].trim_start().len()
            })
            .collect();
        assert!(
            value_columns.windows(2).all(|w| w[0] == w[1]),
            "values not aligned:\n{text}"
        );
    }
}
