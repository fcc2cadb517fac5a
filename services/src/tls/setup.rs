//! The servers set themselves up: on first start with `--state-dir`,
//! auth-svc or index-svc (whichever comes first, under a lock) makes the
//! deployment's CA and the servers' certificate in `STATE/pki/`, and every
//! later start keeps what exists. The server certificate names the
//! machine's host name and every address it has, so agents can dial any of
//! them; it is re-issued at start when those changed or it nears expiry.
//! `p2p-certs` stays for operators who bring their own CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::TlsError;
use super::issue::{CertDir, Role};

/// The server leaf's name in the pki directory (`server.pem`, a chain).
pub const SERVER_LEAF: &str = "server";
/// The CA's fingerprint as text, in the pki directory.
pub const FINGERPRINT_FILE: &str = "ca.fingerprint";
/// Re-issue the server certificate when it expires sooner than this.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Longest a start waits for another server process setting up the same
/// directory.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a server serves with after [`ensure`].
#[derive(Debug, Clone)]
pub struct ServerPki {
    /// The files (`ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`).
    pub certs: CertDir,
    /// The CA's fingerprint, for people to compare.
    pub ca_fingerprint: String,
    /// Whether the CA was made by this start.
    pub made_ca: bool,
    /// Whether the server certificate was (re-)issued by this start.
    pub issued_server: bool,
    /// The names the server certificate is valid for.
    pub names: Vec<String>,
}

/// The pki directory of a state dir.
pub fn pki_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pki")
}

/// Every name this machine is reached by: its host name (and `NAME.local`
/// for mDNS), localhost, the loopback addresses and each interface address.
pub fn machine_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if !host.is_empty() && host != "localhost" {
        if !host.contains('.') {
            names.push(format!("{host}.local"));
        }
        names.push(host);
    }
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        for interface in interfaces {
            let ip = interface.ip();
            if ip.is_loopback() {
                continue;
            }
            if let std::net::IpAddr::V6(v6) = ip
                && (v6.segments()[0] & 0xffc0) == 0xfe80
            {
                // Link-local addresses need a zone; nobody dials them.
                continue;
            }
            names.push(ip.to_string());
        }
    }
    names
}

/// Makes or keeps the CA and the server certificate in
/// `STATE/pki/`, the certificate valid for [`machine_names`] and `extra`.
pub fn ensure(state_dir: &Path, extra: &[String]) -> Result<ServerPki, TlsError> {
    let dir = pki_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    let _lock = lock(&dir)?;
    let certs = CertDir::new(&dir);
    let (ca, made_ca) = certs.ensure_ca()?;
    let mut names = machine_names();
    for name in extra {
        let name = name.trim();
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let current = std::fs::read(certs.cert(SERVER_LEAF))
        .ok()
        .and_then(|pem| super::issue::names_and_validity(&pem).ok());
    let now = chrono::Utc::now().timestamp();
    let fresh = match &current {
        Some((have, _, not_after)) => {
            names.iter().all(|n| have.contains(n))
                && *not_after > now + RENEW_BEFORE.as_secs() as i64
                && certs.key(SERVER_LEAF).exists()
        }
        None => false,
    };
    if !fresh {
        certs.ensure_leaf(&ca, SERVER_LEAF, &names, Role::Server, true)?;
    }
    let ca_fingerprint = ca.fingerprint()?;
    // For people and scripts on the server (`p2p join --fingerprint-file`
    // in compose): the same text the log shows.
    super::issue::write(
        &dir.join(FINGERPRINT_FILE),
        &format!("{ca_fingerprint}\n"),
        false,
    )?;
    Ok(ServerPki {
        ca_fingerprint,
        certs,
        made_ca,
        issued_server: !fresh,
        names,
    })
}

/// An exclusive lock on `dir/.lock`, held until dropped, waited for at
/// most [`LOCK_WAIT`].
fn lock(dir: &Path) -> Result<std::fs::File, TlsError> {
    use rustix::fs::{FlockOperation, flock};
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => {
                return Err(TlsError::Write {
                    path,
                    source: std::io::Error::other(format!(
                        "another process has held this lock for {LOCK_WAIT:?} ({err})"
                    )),
                });
            }
        }
    }
}

/// The flags of a server that sets itself up (auth-svc, index-svc).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerSetupArgs {
    /// Directory for this server's state: with it, the first start makes
    /// the deployment's CA and the servers' certificate in STATE/pki/ (kept
    /// afterwards; auth-svc and index-svc on one machine share one
    /// directory) and the database defaults to a SQLite file in it. Flags
    /// --tls-cert/--tls-key/--tls-ca still win when given.
    #[arg(long, env = "P2P_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// More names (DNS names or addresses, comma-separated) for the server
    /// certificate made in --state-dir; the host name and every address of
    /// the machine are always in it.
    #[arg(long, env = "P2P_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
}

/// How a server serves and calls, once its flags and state dir are read.
#[derive(Debug, Clone)]
pub struct ResolvedTls {
    /// The identity it serves with (`None`: plaintext).
    pub server: Option<super::ServerTls>,
    /// How it verifies the servers it calls, when the state dir says
    /// (else the flags say: [`super::TlsArgs::client`]).
    pub client: Option<super::ClientTls>,
    /// The state dir's pki, when that is where the identity came from.
    pub pki: Option<ServerPki>,
}

impl ServerSetupArgs {
    /// The server's TLS: the flags when they name a certificate, else the
    /// state dir's pki (made now on first start), else what the flags say
    /// (an error naming them when nothing was given).
    pub fn resolve(&self, flags: &super::TlsArgs) -> Result<ResolvedTls, TlsError> {
        match &self.state_dir {
            Some(state) if !flags.insecure_plaintext && flags.tls_cert.is_none() => {
                let pki = ensure(state, &self.tls_names)?;
                let server = super::ServerTls::from_files(
                    &pki.certs.cert(SERVER_LEAF),
                    &pki.certs.key(SERVER_LEAF),
                )?;
                let client = match &flags.tls_ca {
                    Some(ca) => super::ClientTls::from_ca_file(ca)?,
                    None => super::ClientTls::from_ca_file(&pki.certs.ca_cert())?,
                };
                Ok(ResolvedTls {
                    server: Some(server),
                    client: Some(client),
                    pki: Some(pki),
                })
            }
            _ => Ok(ResolvedTls {
                server: flags.server()?,
                client: None,
                pki: None,
            }),
        }
    }

    /// How a one-shot command (`healthcheck`) verifies the server: the
    /// flags, else the state dir's CA.
    pub fn client(&self, flags: &super::TlsArgs) -> Result<super::ClientTls, TlsError> {
        match &self.state_dir {
            Some(state) if !flags.insecure_plaintext && flags.tls_ca.is_none() => {
                super::ClientTls::from_ca_file(&CertDir::new(pki_dir(state)).ca_cert())
            }
            _ => flags.client(),
        }
    }

    /// The database URL: the one given, else a SQLite file named `file`
    /// in the state dir, else `fallback`.
    pub fn database_url(&self, given: Option<&str>, file: &str, fallback: &str) -> String {
        match (given, &self.state_dir) {
            (Some(url), _) => url.to_string(),
            (None, Some(state)) => format!("sqlite://{}", state.join(file).display()),
            (None, None) => fallback.to_string(),
        }
    }
}

/// Logs what a state-dir start made, once, for the operator to compare.
pub fn log_setup(pki: &ServerPki, binary: &str) {
    if pki.made_ca {
        tracing::warn!(
            binary,
            fingerprint = %pki.ca_fingerprint,
            ca = %pki.certs.ca_cert().display(),
            "made the deployment's CA; machines join with `p2p join ADDRESS --fingerprint {}`",
            pki.ca_fingerprint
        );
    } else {
        tracing::info!(binary, fingerprint = %pki.ca_fingerprint, "deployment CA");
    }
    if pki.issued_server {
        tracing::info!(binary, names = ?pki.names, "issued the server certificate");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_makes_everything_and_later_starts_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &["auth.lan".into()]).unwrap();
        assert!(first.made_ca && first.issued_server);
        assert!(first.names.iter().any(|n| n == "auth.lan"));
        assert!(first.ca_fingerprint.starts_with("sha256:"));
        let again = ensure(dir.path(), &["auth.lan".into()]).unwrap();
        assert!(!again.made_ca && !again.issued_server);
        assert_eq!(again.ca_fingerprint, first.ca_fingerprint);
        // A new name re-issues the server certificate, under the same CA.
        let renamed = ensure(dir.path(), &["index.lan".into()]).unwrap();
        assert!(!renamed.made_ca && renamed.issued_server);
        assert_eq!(renamed.ca_fingerprint, first.ca_fingerprint);
        let chain = std::fs::read_to_string(renamed.certs.cert(SERVER_LEAF)).unwrap();
        assert_eq!(
            chain.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf then CA"
        );
        assert_eq!(
            super::super::pem_fingerprint(std::fs::read(renamed.certs.ca_cert()).unwrap()).unwrap(),
            first.ca_fingerprint
        );
    }
}
