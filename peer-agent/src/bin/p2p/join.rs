//! `p2p join`: the one command that joins a machine. It needs no running
//! agent: it talks to auth-svc itself (`peer_agent::enrollment::trust`,
//! then `join_trusted`) and leaves what it learned in the agent's data
//! dir. Then, if an agent is waiting there, it waits for it to start and
//! logs it in with the same password.

use std::io::IsTerminal;
use std::time::Duration;

use p2p_proto::agent::v1 as agent;
use p2p_services::discovery::{self, Found};
use peer_agent::enrollment::{self, Credential};
use serde::Serialize;

use crate::cli::{AgentArgs, JoinArgs};
use crate::commands::{self, Output};
use crate::error::Error;

/// How long a joined agent's control socket is waited for: an agent
/// waiting for the join notices within half a second.
const AGENT_START_WAIT: Duration = Duration::from_secs(10);

/// What `p2p join` reports.
#[derive(Debug, Serialize)]
struct Joined {
    ok: bool,
    server: String,
    index_url: String,
    ca_fingerprint: String,
    user: String,
    /// The address this machine's certificate names.
    address: String,
    cert_not_after: i64,
    data_dir: String,
    /// Whether a running agent was logged in.
    agent_logged_in: bool,
    /// What to do next, for people.
    next: String,
}

/// Where and whom to trust, once the arguments are read.
struct Target {
    server: String,
    fingerprint: String,
    token: Option<String>,
}

/// Runs `p2p join`.
pub async fn run(agent: &AgentArgs, out: Output, mut args: JoinArgs) -> Result<(), Error> {
    if let Some(file) = &args.fingerprint_file {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Path {
            path: file.display().to_string(),
            source,
        })?;
        args.fingerprint = Some(text.trim().to_string());
    }
    let target = target(&args, out).await?;
    if args.if_not_joined
        && let Ok(Some(joined)) = enrollment::Joined::load(&agent.data_dir)
        && p2p_services::tls::parse_fingerprint(&target.fingerprint).as_deref()
            == Some(joined.deployment.ca_fingerprint.as_str())
    {
        let message = format!(
            "already joined the deployment at {} (CA {}) as {}: nothing to do",
            joined.deployment.auth_url,
            joined.deployment.ca_fingerprint,
            joined.deployment.username
        );
        if out.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "already_joined": true, "message": message})
            );
        } else {
            println!("{message}");
        }
        return Ok(());
    }
    // The server proves itself before anything is asked of the user.
    let trusted = enrollment::trust(&target.server, &target.fingerprint)
        .await
        .map_err(join_error)?;
    let credential = match &target.token {
        Some(token) => Credential::JoinToken(token.clone()),
        None => {
            let username = match &args.user {
                Some(user) => user.clone(),
                None => commands::prompt_line("username")?,
            };
            let password = commands::read_password(&args.password, "password")?;
            Credential::Password { username, password }
        }
    };
    let joined = enrollment::join_trusted(&agent.data_dir, trusted, credential.clone())
        .await
        .map_err(join_error)?;
    let info = joined
        .cert_info()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let address = info
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| "-".to_string());
    let username = joined.deployment.username.clone();
    let agent_logged_in = match &credential {
        Credential::Password { username, password } => {
            log_in_waiting_agent(agent, out, username, password).await
        }
        Credential::JoinToken(_) => false,
    };
    let next = if agent_logged_in {
        "the agent is running and logged in: try `p2p ls`".to_string()
    } else {
        "a waiting agent starts with it now; else start the agent (`sudo systemctl enable --now \
         p2p-agent@$USER` with the p2p-agent package, or peer-agent): it logs in with its \
         certificate at every start, until `p2p logout`"
            .to_string()
    };
    let report = Joined {
        ok: true,
        server: joined.deployment.auth_url.clone(),
        index_url: joined.deployment.index_url.clone(),
        ca_fingerprint: joined.deployment.ca_fingerprint.clone(),
        user: username,
        address,
        cert_not_after: info.not_after,
        data_dir: agent.data_dir.display().to_string(),
        agent_logged_in,
        next,
    };
    out.show(&report, |r| {
        format!(
            "joined the deployment at {} (CA {}) as {}\n\
             this machine's certificate names {}, valid until {}; it renews by itself\n\
             index: {}\nkept in {}/{}\n{}\n",
            r.server,
            r.ca_fingerprint,
            r.user,
            r.address,
            crate::format::local_time(r.cert_not_after * 1000),
            r.index_url,
            r.data_dir,
            enrollment::DIR,
            r.next
        )
    });
    Ok(())
}

/// The server, fingerprint and token from the arguments: an invite, an
/// address, or a server found on the LAN.
async fn target(args: &JoinArgs, out: Output) -> Result<Target, Error> {
    let token = args.token.clone();
    if let Some(text) = args.server.as_deref().map(str::trim) {
        if text.starts_with("p2p-invite:") {
            let invite = p2p_services::invite::Invite::parse(text)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            if let Some(given) = &args.fingerprint
                && p2p_services::tls::parse_fingerprint(given).as_deref()
                    != Some(invite.fingerprint.as_str())
            {
                return Err(Error::Invalid(format!(
                    "the invite names CA {} but --fingerprint says {given}; ask for a new \
                     invite, or drop --fingerprint",
                    invite.fingerprint
                )));
            }
            return Ok(Target {
                server: invite.server,
                fingerprint: invite.fingerprint,
                token: token.or(invite.token),
            });
        }
        let fingerprint = args.fingerprint.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "give the server's CA fingerprint: p2p join {text} --fingerprint sha256:... (the \
                 server printed it at its first start; `p2p-certs fingerprint` on the server \
                 prints it again), or an invite from an admin (p2p invite)"
            ))
        })?;
        return Ok(Target {
            server: text.to_string(),
            fingerprint,
            token,
        });
    }
    if !out.json {
        eprintln!(
            "looking for servers on this LAN for {}...",
            crate::format::duration(args.browse)
        );
    }
    let found = discovery::browse(args.browse)
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let wanted = args
        .fingerprint
        .as_deref()
        .map(|f| p2p_services::tls::parse_fingerprint(f).unwrap_or_else(|| f.to_string()));
    let matching: Vec<&Found> = found
        .iter()
        .filter(|f| wanted.is_none() || f.fingerprint() == wanted.as_deref())
        .collect();
    match (matching.as_slice(), &wanted) {
        ([one], Some(fingerprint)) => {
            let server = first_address(one)?;
            if !out.json {
                eprintln!("found {} at {server}", one.instance);
            }
            Ok(Target {
                server,
                fingerprint: fingerprint.clone(),
                token,
            })
        }
        // One server and nobody named a fingerprint: a person at a
        // terminal compares it with the one their admin gave, as with an
        // SSH host key; a script must name it.
        ([one], None) if !out.json && std::io::stdin().is_terminal() => {
            let fingerprint = one.fingerprint().map(str::to_string).ok_or_else(|| {
                Error::Invalid(format!("{} announced no CA fingerprint", one.instance))
            })?;
            let server = first_address(one)?;
            eprintln!(
                "found {} at {server}\nits CA fingerprint is {fingerprint}\n\
                 join it only if this is the fingerprint your admin gave you (the server logged \
                 it at its first start)",
                one.instance
            );
            let answer = commands::prompt_line("join it? [y/N]")?;
            if !matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes") {
                return Err(Error::Invalid("not joined".into()));
            }
            Ok(Target {
                server,
                fingerprint,
                token,
            })
        }
        _ => Err(Error::Invalid(listing(&found, wanted.as_deref()))),
    }
}

/// The address to dial a server found on the LAN at.
fn first_address(found: &Found) -> Result<String, Error> {
    found
        .dial_addrs()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid(format!("{} announced no address", found.instance)))
}

/// What was found, and what to type next.
fn listing(found: &[Found], wanted: Option<&str>) -> String {
    if found.is_empty() {
        return "no server announced itself on this LAN (multicast may be blocked between \
                here and the server: routers, VLANs and some Wi-Fi do): give its address, \
                p2p join HOST --fingerprint sha256:..."
            .into();
    }
    let mut text = match wanted {
        Some(fingerprint) => {
            format!("no server on this LAN has the CA {fingerprint}; these announced themselves:\n")
        }
        None => "servers on this LAN (compare the fingerprint with the one your admin gave \
                 you before you join):\n"
            .into(),
    };
    for server in found {
        text.push_str(&format!(
            "  {}  {}  CA {}\n",
            server.instance,
            server.dial_addrs().first().map_or("-", String::as_str),
            server.fingerprint().unwrap_or("(none announced)")
        ));
    }
    text.push_str("join one with: p2p join ADDRESS --fingerprint sha256:...");
    text
}

/// An enrollment failure as the CLI reports it: refusals by auth-svc keep
/// its message, unreachable servers exit 3, wrong credentials 4.
fn join_error(err: peer_agent::Error) -> Error {
    match err {
        peer_agent::Error::Remote { status, .. } => match status.code() {
            tonic::Code::Unauthenticated => Error::JoinRefused(status.message().to_string()),
            tonic::Code::PermissionDenied => Error::PermissionDenied(status.message().to_string()),
            _ => Error::Invalid(status.message().to_string()),
        },
        peer_agent::Error::AuthUnavailable(detail) => Error::AgentUnreachable {
            addr: "auth-svc".into(),
            detail,
        },
        other => Error::Invalid(other.to_string()),
    }
}

/// Logs in the agent that waited in this data dir for the join (bounded by
/// [`AGENT_START_WAIT`]); `false` when no agent came up.
async fn log_in_waiting_agent(
    agent: &AgentArgs,
    out: Output,
    username: &str,
    password: &str,
) -> bool {
    let waiting = agent.data_dir.join(peer_agent::WAITING_FOR_JOIN_FILE);
    let socket = agent.data_dir.join(peer_agent::config::CONTROL_SOCKET_FILE);
    if !waiting.exists() && !socket.exists() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + AGENT_START_WAIT;
    let mut session = loop {
        match commands::connect(agent, out).await {
            Ok(session) => break session,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(_) => return false,
        }
    };
    session
        .client()
        .login(agent::LoginRequest {
            username: username.to_string(),
            password: password.to_string(),
        })
        .await
        .is_ok()
}
