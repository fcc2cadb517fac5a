//! `p2p-certs`: the deployment's certificate tooling. Makes a private CA and
//! issues the certificates auth-svc, index-svc and each agent present.
//! For operators who bring their own CA; servers started with
//! `--state-dir` make theirs. Idempotent: what exists is kept (unless
//! `--force`), so a start script can run it on every start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use p2p_services::tls::issue::{CertDir, Role};

const ABOUT: &str =
    "Make the deployment's CA and the certificates its services and agents present.";

const AFTER_HELP: &str = "\
Files in --dir: ca.pem (give it to every binary as --tls-ca), ca-key.pem
(keep it secret; only this tool reads it), NAME.pem and NAME-key.pem per
certificate (--tls-cert, --tls-key).

Examples:
  p2p-certs ca --dir tls
  p2p-certs server --dir tls --name auth --host auth.lan --host 10.0.0.5
  p2p-certs agent --dir tls --name alice-laptop --host 10.0.0.23

An agent's certificate must name the host it advertises (PEER_ADVERTISE):
downloaders check that the peer the index named is the one answering.";

#[derive(Debug, Parser)]
#[command(name = "p2p-certs", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Invocation,
}

/// Every subcommand: the certificates, and the manual.
#[derive(Debug, Subcommand)]
enum Invocation {
    #[command(flatten)]
    Certs(Command),
    /// Shell completions and the man page.
    #[command(flatten)]
    Manual(p2p_services::manual::Manual),
}

/// What `p2p-certs` makes.
#[derive(Debug, Subcommand)]
enum Command {
    /// Make the CA in --dir unless it exists.
    Ca {
        /// Where the certificates live.
        #[arg(long, env = "P2P_TLS_DIR", default_value = "tls")]
        dir: PathBuf,
    },
    /// Issue a server certificate (auth-svc, index-svc), making the CA
    /// first if there is none.
    Server(Leaf),
    /// Issue an agent's certificate (its PeerService), making the CA first
    /// if there is none.
    Agent(Leaf),
    /// Print a CA's fingerprint: what `p2p join --fingerprint` takes.
    /// Without FILE, the CA in --dir, or in a server's --state-dir.
    #[command(after_help = "Examples:\n  p2p-certs fingerprint --dir tls\n  \
        p2p-certs fingerprint --state-dir /var/lib/p2p-server\n  p2p-certs fingerprint ca.pem")]
    Fingerprint {
        /// A CA certificate (PEM).
        file: Option<PathBuf>,
        /// Where the certificates live.
        #[arg(long, env = "P2P_TLS_DIR", default_value = "tls")]
        dir: PathBuf,
        /// A server's state dir (its CA is in STATE/pki/).
        #[arg(long, env = "P2P_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Make the CA and several certificates at once, keeping what exists,
    /// so a start script can run it on every start.
    Bundle {
        /// Where the certificates live.
        #[arg(long, env = "P2P_TLS_DIR", default_value = "tls")]
        dir: PathBuf,
        /// A server certificate as NAME:HOST[,HOST...]; repeat.
        #[arg(long = "server")]
        servers: Vec<String>,
        /// An agent certificate as NAME:HOST[,HOST...]; repeat.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Also make every certificate valid for localhost and 127.0.0.1.
        #[arg(long)]
        loopback: bool,
    },
}

#[derive(Debug, clap::Args)]
struct Leaf {
    /// Where the certificates live.
    #[arg(long, env = "P2P_TLS_DIR", default_value = "tls")]
    dir: PathBuf,
    /// File name of the certificate (NAME.pem, NAME-key.pem).
    #[arg(long)]
    name: String,
    /// A DNS name or IP address clients dial; repeat for several.
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// Also valid for localhost and 127.0.0.1 (for health checks and local
    /// runs).
    #[arg(long)]
    loopback: bool,
    /// Issue again even if the files exist.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Invocation::Manual(manual) => return manual.print(Cli::command()),
        Invocation::Certs(command) => command,
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2p-certs: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), p2p_services::tls::TlsError> {
    let (leaf, role) = match command {
        Command::Ca { dir } => {
            let certs = CertDir::new(dir);
            let (_, made) = certs.ensure_ca()?;
            report(made, &certs.ca_cert().display().to_string());
            return Ok(());
        }
        Command::Fingerprint {
            file,
            dir,
            state_dir,
        } => {
            let path = match (file, state_dir) {
                (Some(file), _) => file,
                (None, Some(state)) => {
                    CertDir::new(p2p_services::tls::setup::pki_dir(&state)).ca_cert()
                }
                (None, None) => CertDir::new(dir).ca_cert(),
            };
            let pem = std::fs::read(&path).map_err(|source| p2p_services::tls::TlsError::Read {
                what: "CA certificate",
                path: path.clone(),
                source,
            })?;
            println!("{}", p2p_services::tls::pem_fingerprint(pem)?);
            return Ok(());
        }
        Command::Server(leaf) => (leaf, Role::Server),
        Command::Agent(leaf) => (leaf, Role::Agent),
        Command::Bundle {
            dir,
            servers,
            agents,
            loopback,
        } => {
            let specs = servers
                .iter()
                .map(|s| (s, Role::Server))
                .chain(agents.iter().map(|s| (s, Role::Agent)));
            for (spec, role) in specs {
                let (name, hosts) = spec
                    .split_once(':')
                    .ok_or_else(|| invalid(&dir, spec, "expected NAME:HOST[,HOST...]"))?;
                let leaf = Leaf {
                    dir: dir.clone(),
                    name: name.to_string(),
                    hosts: hosts.split(',').map(str::to_string).collect(),
                    loopback,
                    force: false,
                };
                issue_leaf(&leaf, role)?;
            }
            return Ok(());
        }
    };
    issue_leaf(&leaf, role)
}

fn invalid(dir: &std::path::Path, name: &str, why: &str) -> p2p_services::tls::TlsError {
    p2p_services::tls::TlsError::Write {
        path: dir.join(name),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    }
}

fn issue_leaf(leaf: &Leaf, role: Role) -> Result<(), p2p_services::tls::TlsError> {
    if !valid_name(&leaf.name) {
        return Err(invalid(
            &leaf.dir,
            &leaf.name,
            "the name must be letters, digits, '.', '_' or '-'",
        ));
    }
    if leaf.hosts.iter().any(|h| h.trim().is_empty()) {
        return Err(invalid(&leaf.dir, &leaf.name, "a host is empty"));
    }
    let certs = CertDir::new(&leaf.dir);
    let (ca, made) = certs.ensure_ca()?;
    if made {
        report(true, &certs.ca_cert().display().to_string());
    }
    let mut hosts = leaf.hosts.clone();
    if leaf.loopback {
        hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    }
    let issued = certs.ensure_leaf(&ca, &leaf.name, &hosts, role, leaf.force)?;
    report(
        issued,
        &format!(
            "{} for {}",
            certs.cert(&leaf.name).display(),
            hosts.join(", ")
        ),
    );
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.')
}

fn report(made: bool, what: &str) {
    if made {
        println!("made {what}");
    } else {
        println!("kept {what} (exists; --force to issue again)");
    }
}
