//! The agent's configuration: one clap struct, every flag with an
//! environment fallback, validated once at start-up by [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use p2p_services::telemetry::TelemetryArgs;

use crate::error::Error;
use crate::session::Advertise;

/// The data dir when none is given: `$XDG_DATA_HOME/p2p`, else
/// `~/.local/share/p2p`, else `./p2p-data` (no home at all). The agent and
/// `p2p` agree on it, so `p2p` finds the agent without flags.
pub fn default_data_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|home| home.join(".local/share"));
    match xdg.or(home) {
        Some(base) => base.join("p2p"),
        None => PathBuf::from("./p2p-data"),
    }
}

/// The control socket's name in the data dir.
pub const CONTROL_SOCKET_FILE: &str = "control.sock";
/// The TCP control token's name in the data dir.
pub const CONTROL_TOKEN_FILE: &str = "control.token";

/// Everything `peer-agent` is told at start-up.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "peer-agent",
    version,
    about = "The P2P File Transfer agent: shares files, serves chunks to other agents and downloads from the swarm."
)]
pub struct Config {
    /// Address the PeerService (FetchChunks) listens on.
    #[arg(long, env = "PEER_LISTEN", default_value = "0.0.0.0:50053")]
    pub listen: String,
    /// `host:port` other agents reach the PeerService at (for NAT).
    /// Default: the listen address when it names a host; when it listens on
    /// 0.0.0.0, the address the index sees this agent's calls come from,
    /// followed when it changes (DHCP).
    #[arg(long, env = "PEER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Unix socket of the local control API (AgentControl), created with
    /// mode 0600 so only this agent's user can use it. Default:
    /// <data-dir>/control.sock.
    #[arg(long, env = "AGENT_CONTROL_SOCKET", global = true)]
    pub control_socket: Option<PathBuf>,
    /// Also serve the control API on this TCP address (e.g.
    /// 127.0.0.1:50054). Every call must carry the token the agent writes to
    /// <data-dir>/control.token. Must be loopback unless
    /// --allow-remote-control.
    #[arg(long, env = "AGENT_CONTROL")]
    pub control_listen: Option<String>,
    /// Removed: it served the control API on TCP without a token. Refused
    /// with a message naming what replaced it, rather than quietly taken as
    /// --control-listen, whose port then refuses every tokenless call.
    #[arg(long = "control", hide = true, value_parser = removed_control_flag)]
    pub removed_control: Option<String>,
    /// Accept a non-loopback --control-listen address. Calls still need the
    /// control token, but anyone who obtains it acts as the logged-in user.
    #[arg(long, env = "AGENT_ALLOW_REMOTE_CONTROL")]
    pub allow_remote_control: bool,
    /// Address of the web app (open http://ADDRESS/ in a browser); empty
    /// disables it. Must be loopback unless --allow-remote-web.
    #[arg(long, env = "P2P_WEB_LISTEN", default_value = "127.0.0.1:50055")]
    pub web_listen: String,
    /// Accept a non-loopback --web-listen address (for a container whose
    /// port is published on the host's loopback). A browser still gets in
    /// only through a one-time link from `p2p web` and the account's
    /// password.
    #[arg(long, env = "P2P_ALLOW_REMOTE_WEB")]
    pub allow_remote_web: bool,
    /// The address browsers reach the web app at, used in the one-time
    /// links `p2p web` prints (e.g. http://127.0.0.1:50255/ for a
    /// container whose port is published there). Default: http:// and the
    /// --web-listen address, with 127.0.0.1 when it listens on 0.0.0.0.
    #[arg(long, env = "P2P_WEB_URL")]
    pub web_url: Option<String>,
    /// How long a one-time web link from `p2p web` stays good if nobody
    /// opens it (e.g. 2m, 30s); opened once, it is spent.
    #[arg(long, env = "P2P_WEB_LINK_LIFETIME", default_value = "2m", value_parser = p2p_services::config::parse_duration)]
    pub web_link_lifetime: std::time::Duration,
    /// Host names (`name` or `name:port`, comma-separated) the web app
    /// answers to besides 127.0.0.1, localhost and [::1]; any other `Host`
    /// header is refused, which stops DNS-rebinding attacks.
    #[arg(long, env = "P2P_WEB_ALLOW_HOSTS", value_delimiter = ',')]
    pub web_allow_host: Vec<String>,
    /// Directory for the agent's database, partial downloads and what
    /// `p2p join` learned. Default: $XDG_DATA_HOME/p2p, i.e.
    /// ~/.local/share/p2p.
    #[arg(
        long,
        env = "P2P_DATA_DIR",
        default_value_os_t = default_data_dir(),
        global = true
    )]
    pub data_dir: PathBuf,
    /// Where downloads land when no destination is given. Default:
    /// <data-dir>/downloads.
    #[arg(long, env = "P2P_DOWNLOADS_DIR")]
    pub downloads_dir: Option<PathBuf>,
    /// The index service (`host:port`), or several replicas on one
    /// database separated by commas (`idx1:50052,idx2:50052`): the agent
    /// sticks to one while it answers and moves to another within a call
    /// when it stops. A DNS name that resolves to several addresses
    /// (`index.lan:50052`) is one replica per address; the agent looks it
    /// up again every 30 s and when every replica failed, and over TLS
    /// checks that each replica's certificate names the name.
    ///
    /// Default: what `p2p join` learned. Without a join and without
    /// these flags the agent waits for `p2p join`.
    #[arg(long, env = "P2P_INDEX_URL")]
    pub index_url: Option<String>,
    /// The auth service (`host:port`). Default: the server `p2p join`
    /// joined.
    #[arg(long, env = "P2P_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Log in as this user at start (unattended agents), retrying with
    /// backoff until it works; `p2p status` shows why it has not yet.
    #[arg(long, env = "P2P_USER")]
    pub user: Option<String>,
    /// Password for --user.
    #[arg(long, env = "P2P_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Upload limit shared by all streams, in bytes per second: a number
    /// with an optional unit (10MiB, 500KB, 100Mbit). 0 means unlimited.
    #[arg(long, env = "P2P_MAX_UPLOAD_RATE", default_value = "0", value_parser = parse_rate)]
    pub max_upload_rate: u64,
    /// The DiffServ mark (DSCP) on the packets of this agent's uploads over
    /// the chunk framing: a name (AF11, CS1, LE, ...), a number from 0 to
    /// 63, or `off`. The default, AF11 ("high-throughput data"), lets this
    /// host's own queue send its downloads' requests and acknowledgements
    /// ahead of its uploads: Linux's default queue sorts AF11 into its bulk
    /// band, Wi-Fi into its background category. Without it, a host whose
    /// uplink is full downloads slower than its peers.
    #[arg(long, env = "P2P_UPLOAD_DSCP", default_value = "AF11", value_parser = p2p_services::dscp::parse_mark)]
    pub upload_dscp: std::option::Option<p2p_services::dscp::Dscp>,
    /// Most FetchChunks streams served at once (0 means unlimited). A
    /// downloader turned away (RESOURCE_EXHAUSTED) asks again shortly and
    /// meanwhile fetches from other peers.
    #[arg(long, env = "P2P_MAX_UPLOADS", default_value_t = 16)]
    pub max_uploads: u32,
    /// Threads that run the agent's network work: TLS, checking received
    /// chunks, the control API and the web app (0: one per core). File
    /// reads and writes run on threads of their own either way. On a
    /// small machine shared with other work, 1 spends less CPU per byte
    /// than one per core, whose threads hand work to each other, and one
    /// thread still moved 6 to 7 Gbit/s of chunks on loopback
    /// (BENCHMARKS.md §2b). A 10 GbE host that uploads and downloads at
    /// once wants 2 or more.
    #[arg(long, env = "P2P_WORKER_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub worker_threads: u16,
    /// End an upload stream whose caller has not taken a chunk for this long
    /// (e.g. 30s, 2m), freeing its slot for other downloaders.
    #[arg(long, env = "P2P_UPLOAD_STALL_TIMEOUT", default_value = "30s", value_parser = p2p_services::config::parse_duration)]
    pub upload_stall_timeout: std::time::Duration,
    /// Address for Prometheus metrics (GET /metrics); empty disables.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:9103")]
    pub metrics_listen: String,
    /// Fault injection for tests: flip a byte in every chunk served, so
    /// downloaders must detect and report this agent. Never use it in
    /// production.
    #[arg(long, env = "P2P_CORRUPT_UPLOADS", hide = true)]
    pub corrupt_uploads: bool,
    /// TLS: --tls-cert/--tls-key are this agent's certificate (it must
    /// name the advertised host), presented by its PeerService; --tls-ca
    /// verifies auth-svc, index-svc and every source.
    #[command(flatten)]
    pub tls: p2p_services::tls::TlsArgs,
    /// Serve and fetch chunks without TLS while auth-svc and index-svc stay
    /// on TLS. Only for a trusted LAN where every agent sets it: chunks and
    /// the short-lived peer tokens then cross in clear.
    #[arg(long, env = "P2P_PEER_INSECURE_PLAINTEXT")]
    pub peer_insecure_plaintext: bool,
    /// Serve and fetch chunks only with FetchChunks (gRPC), never as
    /// `p2p-chunks/1` frames beside it on the same TLS port, and holdings
    /// only with WatchHoldings, never as `p2p-holdings/1` frames: how an
    /// agent from before the framings behaves. The framings need TLS, so
    /// with --peer-insecure-plaintext they are off anyway.
    #[arg(long, env = "P2P_NO_CHUNK_FRAMING")]
    pub no_chunk_framing: bool,
    /// Telemetry.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Run a subcommand instead of the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does besides running the agent.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Probe the control API's health and exit 0 (serving) or 1.
    ///
    /// It asks over the control socket (--control-socket, default
    /// <data-dir>/control.sock; both go before or after `healthcheck`), so
    /// it needs no TLS flags.
    Healthcheck,
    /// Shell completions and the man page.
    #[command(flatten)]
    Manual(p2p_services::manual::Manual),
}

/// Refuses `--control` (see [`Config::removed_control`]) with what to use.
fn removed_control_flag(_: &str) -> Result<String, String> {
    Err(
        "--control was removed: it served the control API on TCP without a token. The agent \
         now serves it on the Unix socket <data-dir>/control.sock, which `p2p --data-dir DIR` \
         finds; for TCP, pass --control-listen ADDR and give p2p the token in \
         <data-dir>/control.token (--agent-token-file)"
            .into(),
    )
}

impl Config {
    /// TLS for the data path: the PeerService identity (`None`:
    /// plaintext) and how sources are verified.
    pub fn peer_tls(
        &self,
    ) -> Result<
        (
            Option<p2p_services::tls::ServerTls>,
            p2p_services::tls::ClientTls,
        ),
        Error,
    > {
        if self.peer_insecure_plaintext || self.tls.insecure_plaintext {
            if !self.tls.insecure_plaintext {
                tracing::warn!(
                    "--peer-insecure-plaintext: chunks and peer tokens cross the network in clear"
                );
            }
            return Ok((None, p2p_services::tls::ClientTls::Plaintext));
        }
        Ok((self.tls.server()?, self.tls.client()?))
    }

    /// Where downloads land by default.
    pub fn downloads_dir(&self) -> PathBuf {
        self.downloads_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("downloads"))
    }

    /// The advertised address: the flag, or the bound peer address when
    /// it names a host, or else the address the index sees.
    pub fn advertise_for(&self, bound: SocketAddr) -> Advertise {
        match &self.advertise {
            Some(addr) if !addr.trim().is_empty() => Advertise::Fixed(addr.trim().to_string()),
            _ if bound.ip().is_unspecified() => Advertise::Observed { port: bound.port() },
            _ => Advertise::Fixed(bound.to_string()),
        }
    }

    /// Whether the servers are named by flags (or the environment) rather
    /// than by `p2p join`.
    pub fn servers_by_flags(&self) -> bool {
        self.auth_url.is_some()
            || self.index_url.is_some()
            || self.tls.tls_ca.is_some()
            || self.tls.insecure_plaintext
    }

    /// The control API's Unix socket.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join(CONTROL_SOCKET_FILE))
    }

    /// Where the token for the TCP control listener is written.
    pub fn control_token_file(&self) -> PathBuf {
        self.data_dir.join(CONTROL_TOKEN_FILE)
    }

    /// The TCP control address, if one is asked for (an empty value means
    /// none).
    pub fn control_listen(&self) -> Option<&str> {
        self.control_listen
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
    }

    /// Refuses a control listener reachable from other machines unless
    /// explicitly allowed.
    pub fn check_control_addr(&self, bound: SocketAddr) -> Result<(), Error> {
        if bound.ip().is_loopback() || self.allow_remote_control {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "--control-listen {bound} is not a loopback address; anyone on the network who \
                 obtains the control token would act as this agent's user, so use 127.0.0.1 or \
                 pass --allow-remote-control if you really mean it"
            )))
        }
    }
}

impl Config {
    /// The web app's address, if it is on (an empty value turns it off).
    pub fn web_listen(&self) -> Option<&str> {
        Some(self.web_listen.trim()).filter(|a| !a.is_empty())
    }

    /// The address browsers reach the web app at when it listens on
    /// `bound`: --web-url, else `http://` and `bound` (127.0.0.1 for an
    /// unspecified address), always ending in `/`.
    pub fn web_url_for(&self, bound: SocketAddr) -> Result<String, Error> {
        let url = match self.web_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::Config(format!(
                        "--web-url {url:?} must start with http:// or https://, for example \
                         http://127.0.0.1:50055/"
                    )));
                }
                url.to_string()
            }
            _ if bound.ip().is_unspecified() => format!("http://127.0.0.1:{}/", bound.port()),
            _ => format!("http://{bound}/"),
        };
        Ok(if url.ends_with('/') {
            url
        } else {
            format!("{url}/")
        })
    }

    /// Refuses a web app reachable from other machines unless explicitly
    /// allowed.
    pub fn check_web_addr(&self, bound: SocketAddr) -> Result<(), Error> {
        if bound.ip().is_loopback() || self.allow_remote_web {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "--web-listen {bound} is not a loopback address; other machines could reach the \
                 web app, so use 127.0.0.1 or pass --allow-remote-web if you really mean it"
            )))
        }
    }
}

/// Parses a humane byte rate: `0`, `1048576`, `10MiB`, `500KB`, `100Mbit`,
/// `1.5GB/s`. Decimal units (KB, MB, GB) are powers of 1000, binary ones
/// (KiB, MiB, GiB) powers of 1024; `bit` units are divided by 8.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let raw = text.trim();
    let lower = raw.to_ascii_lowercase();
    let lower = lower
        .strip_suffix("/s")
        .or_else(|| lower.strip_suffix("ps"))
        .unwrap_or(&lower);
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a rate: use a number like 0, 10MiB or 100Mbit"))?;
    let multiplier: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "bit" => 1.0 / 8.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        other => {
            return Err(format!(
                "unknown rate unit {other:?} in {raw:?}: use B, KB, MB, GB, KiB, MiB, GiB, Kbit, Mbit or Gbit"
            ));
        }
    };
    Ok((number * multiplier).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_rates_parse_to_bytes_per_second() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("10MiB"), Ok(10 << 20));
        assert_eq!(parse_rate("500KB"), Ok(500_000));
        assert_eq!(parse_rate("100Mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("1.5GB/s"), Ok(1_500_000_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
    }

    #[test]
    fn worker_threads_default_to_one_per_core() {
        let config = Config::try_parse_from(["peer-agent"]).unwrap();
        assert_eq!(config.worker_threads, 0);
        let one = Config::try_parse_from(["peer-agent", "--worker-threads", "1"]).unwrap();
        assert_eq!(one.worker_threads, 1);
        let many = Config::try_parse_from(["peer-agent", "--worker-threads", "5000"])
            .expect_err("more threads than any host has cores");
        assert!(many.to_string().contains("0..=1024"), "{many}");
    }

    #[test]
    fn uploads_are_marked_bulk_unless_told_otherwise() {
        use p2p_services::dscp::Dscp;
        let config = Config::try_parse_from(["peer-agent"]).unwrap();
        assert_eq!(config.upload_dscp, Some(Dscp::BULK));
        let off = Config::try_parse_from(["peer-agent", "--upload-dscp", "off"]).unwrap();
        assert_eq!(off.upload_dscp, None);
        let cs1 = Config::try_parse_from(["peer-agent", "--upload-dscp", "cs1"]).unwrap();
        assert_eq!(cs1.upload_dscp.map(Dscp::value), Some(8));
        let bad = Config::try_parse_from(["peer-agent", "--upload-dscp", "fast"])
            .expect_err("not a DSCP");
        assert!(bad.to_string().contains("0 to 63"), "{bad}");
    }

    #[test]
    fn control_must_be_loopback_unless_allowed() {
        let config =
            Config::try_parse_from(["peer-agent", "--control-listen", "0.0.0.0:1"]).unwrap();
        assert!(
            config
                .check_control_addr("0.0.0.0:1".parse().unwrap())
                .is_err()
        );
        assert!(
            config
                .check_control_addr("127.0.0.1:1".parse().unwrap())
                .is_ok()
        );
        let allowed = Config::try_parse_from(["peer-agent", "--allow-remote-control"]).unwrap();
        assert!(
            allowed
                .check_control_addr("0.0.0.0:1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn web_app_is_on_loopback_by_default_and_can_be_turned_off() {
        let config = Config::try_parse_from(["peer-agent"]).unwrap();
        assert_eq!(config.web_listen(), Some("127.0.0.1:50055"));
        assert!(config.check_web_addr("0.0.0.0:1".parse().unwrap()).is_err());
        assert!(
            config
                .check_web_addr("127.0.0.1:1".parse().unwrap())
                .is_ok()
        );
        assert_eq!(
            config
                .web_url_for("0.0.0.0:50055".parse().unwrap())
                .unwrap(),
            "http://127.0.0.1:50055/"
        );
        assert_eq!(
            config.web_url_for("[::1]:7".parse().unwrap()).unwrap(),
            "http://[::1]:7/"
        );
        let published =
            Config::try_parse_from(["peer-agent", "--web-url", "http://127.0.0.1:50255"]).unwrap();
        assert_eq!(
            published
                .web_url_for("0.0.0.0:50055".parse().unwrap())
                .unwrap(),
            "http://127.0.0.1:50255/"
        );
        let bad = Config::try_parse_from(["peer-agent", "--web-url", "127.0.0.1:1"]).unwrap();
        assert!(bad.web_url_for("127.0.0.1:1".parse().unwrap()).is_err());
        let off = Config::try_parse_from(["peer-agent", "--web-listen", ""]).unwrap();
        assert_eq!(off.web_listen(), None);
        let hosts =
            Config::try_parse_from(["peer-agent", "--web-allow-host", "a.lan,b.lan:80"]).unwrap();
        assert_eq!(hosts.web_allow_host, ["a.lan", "b.lan:80"]);
    }

    #[test]
    fn control_socket_and_token_default_to_the_data_dir() {
        let config = Config::try_parse_from(["peer-agent", "--data-dir", "/srv/p2p"]).unwrap();
        assert_eq!(
            config.control_socket(),
            PathBuf::from("/srv/p2p/control.sock")
        );
        assert_eq!(
            config.control_token_file(),
            PathBuf::from("/srv/p2p/control.token")
        );
        assert_eq!(config.control_listen(), None);
        let tcp =
            Config::try_parse_from(["peer-agent", "--control-listen", "127.0.0.1:9"]).unwrap();
        assert_eq!(tcp.control_listen(), Some("127.0.0.1:9"));
        let removed = Config::try_parse_from(["peer-agent", "--control", "127.0.0.1:9"])
            .expect_err("--control is no alias");
        assert!(
            removed.to_string().contains("--control was removed"),
            "{removed}"
        );
    }

    #[test]
    fn a_wildcard_listen_advertises_what_the_index_sees() {
        let config = Config::try_parse_from(["peer-agent"]).unwrap();
        assert_eq!(
            config.advertise_for("0.0.0.0:4000".parse().unwrap()),
            Advertise::Observed { port: 4000 }
        );
        assert_eq!(
            config.advertise_for("10.0.0.5:4000".parse().unwrap()),
            Advertise::Fixed("10.0.0.5:4000".into())
        );
        let nat = Config::try_parse_from(["peer-agent", "--advertise", "1.2.3.4:9"]).unwrap();
        assert_eq!(
            nat.advertise_for("0.0.0.0:4000".parse().unwrap()),
            Advertise::Fixed("1.2.3.4:9".into())
        );
        assert!(!config.servers_by_flags());
    }
}
