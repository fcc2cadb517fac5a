//! Plumbing every P2P File Transfer binary links, written once:
//!
//! - [`telemetry`]: tracing-subscriber set up from `RUST_LOG`, text or JSON.
//! - [`serve`]: a tonic server with health, reflection, tuned HTTP/2 and
//!   graceful shutdown.
//! - [`listen`]: binding a TCP listen address, with the error that names it.
//! - [`shutdown`]: the SIGINT/SIGTERM signal passed down to every server.
//! - [`db`]: database connect + embedded migrations, SQLite or PostgreSQL
//!   chosen by the URL scheme.
//! - [`auth`]: access-token claims, verification with cached signing keys,
//!   and the tower wrapper that puts verified claims in request extensions.
//! - [`config`]: value parsers shared by every binary's flags (durations).
//! - [`client`]: channels to other services and the bearer header.
//! - [`framing`]: the `p2p-chunks/1` frames that carry chunks beside
//!   HTTP/2 on the PeerService's TLS listener.
//! - [`manifest`]: file ids, chunk geometry, bitfields, names and manifest
//!   validation shared by index-svc and peer-agent.
//! - [`metrics`]: the Prometheus registry, the RPC metrics layer and the
//!   `/metrics` endpoint.
//! - [`health`]: the `healthcheck` probe binaries expose for containers.
//! - [`invite`]: the invite string a new machine joins with (server, CA
//!   fingerprint, optional join token).
//! - [`local`]: APIs for this machine only: private Unix sockets, and the
//!   file token that guards a TCP listener.
//! - [`discovery`]: DNS-SD over mDNS: auth-svc announces itself on the LAN,
//!   clients browse for it.

pub mod admission;
pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod discovery;
pub mod dscp;
pub mod framing;
pub mod health;
pub mod invite;
pub mod listen;
pub mod local;
pub mod manifest;
pub mod manual;
pub mod metrics;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;
