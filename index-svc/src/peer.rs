//! What the index knows about a peer: its id and the load it reports.

use std::fmt;

/// An agent's identity in the index, stable across re-registration with the
/// same user and advertised address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Parses an id received from a client; `None` when it cannot be one we
    /// issued (so garbage never reaches a query).
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::parse_str(text.trim())
            .ok()
            .map(|u| Self(u.to_string()))
    }

    /// Wraps an id read back from the database.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Load and limits an agent reports at registration and with every
/// heartbeat. Zero limits mean "unlimited".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerLoad {
    /// FetchChunks streams being served now.
    pub active_uploads: u32,
    /// Cap on concurrent uploads (0 = unlimited).
    pub max_uploads: u32,
    /// Current upload rate in bytes per second.
    pub upload_rate_bps: u64,
    /// Configured upload limit in bytes per second (0 = unlimited).
    pub max_upload_rate_bps: u64,
    /// Bytes uploaded in the last 60 seconds.
    pub uploaded_bytes_last_60s: u64,
    /// Free space in the agent's data directory.
    pub free_disk_bytes: u64,
}

/// What a peer looks like to `ListPeers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's id.
    pub peer_id: PeerId,
    /// Where other agents reach it.
    pub advertise_addr: String,
    /// The user the agent logged in as.
    pub user_id: String,
    /// That user's name when the agent registered.
    pub username: String,
    /// The agent's self-reported version.
    pub agent_version: String,
    /// Unix ms of the last heartbeat.
    pub last_seen_ms: i64,
    /// Last reported load.
    pub load: PeerLoad,
    /// Files it holds completely.
    pub complete_files: u32,
}

/// Which chunks of one file a peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Every chunk, verified against the whole-file hash.
    Complete,
    /// The chunks marked in the bitfield (never all of them: a full
    /// bitfield is normalised to `Complete`).
    Partial(p2p_services::manifest::Bitfield),
}

impl Holding {
    /// Normalises a reported bitfield: a full one means complete.
    pub fn from_bitfield(bitfield: p2p_services::manifest::Bitfield) -> Self {
        if bitfield.is_complete() {
            Self::Complete
        } else {
            Self::Partial(bitfield)
        }
    }

    /// Chunks held, out of `chunk_count`.
    pub fn chunks_held(&self, chunk_count: u32) -> u32 {
        match self {
            Self::Complete => chunk_count,
            Self::Partial(field) => field.count(),
        }
    }
}
