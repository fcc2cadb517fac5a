//! TLS for every gRPC link, built in one place: the flags every binary
//! shares ([`TlsArgs`]), the server identity ([`ServerTls`]), the client
//! trust ([`ClientTls`]), and the deployment's certificate tooling
//! ([`issue`], behind the `p2p-certs` binary).
//!
//! The trust model is one private CA per deployment. auth-svc and index-svc
//! present certificates for the names clients dial; each agent presents one
//! for the host it advertises, so a downloader that dials the address the
//! index named checks that the CA vouched for that peer at that address.
//! Clients verify servers against the CA only: no system roots are trusted.
//! Plaintext (h2c) happens only when the operator passes
//! `--insecure-plaintext`, and every binary then logs a warning at start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why TLS could not be set up. Every message names the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {what} {path}: {source} (make it with `p2p-certs`, see README)")]
    Read {
        /// Which file this is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Neither TLS files nor the plaintext flag were given.
    #[error(
        "no TLS {missing} given: pass {flags} (make them with `p2p-certs`), or --insecure-plaintext \
         to send passwords and tokens in clear on a trusted network"
    )]
    Missing {
        /// What is missing, for the message.
        missing: &'static str,
        /// The flags that would supply it.
        flags: &'static str,
    },
    /// A URL's scheme contradicts the TLS setting.
    #[error("{url:?} says {scheme}:// but {why}; drop the scheme or change the TLS setting")]
    Scheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
        /// The setting it contradicts.
        why: &'static str,
    },
    /// Making a key or certificate failed.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing the certificate tooling's output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The tonic transport refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The TLS flags every binary takes (flattened into its clap config).
/// Environment variables are shared, so one deployment sets them once.
/// Global, so they also follow a subcommand (`healthcheck --tls-ca CA`)
/// and its `--help` lists them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate this binary presents to its clients (made by
    /// `p2p-certs server` or `p2p-certs agent`).
    #[arg(long, env = "P2P_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "P2P_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the deployment's CA: the servers this binary
    /// calls must present a certificate it signed (made by `p2p-certs ca`).
    #[arg(long, env = "P2P_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Serve and call without TLS. Passwords and tokens then cross the
    /// network in clear: only for a network you trust completely.
    #[arg(long, env = "P2P_INSECURE_PLAINTEXT", global = true)]
    pub insecure_plaintext: bool,
}

impl TlsArgs {
    /// Logs the plaintext warning once at start-up, naming the binary.
    pub fn warn_if_plaintext(&self, binary: &str) {
        if self.insecure_plaintext {
            tracing::warn!(
                binary,
                "--insecure-plaintext: TLS is OFF; passwords and tokens cross the network in clear"
            );
        }
    }

    /// The identity to serve with, or `None` under `--insecure-plaintext`.
    pub fn server(&self) -> Result<Option<ServerTls>, TlsError> {
        if self.insecure_plaintext {
            return Ok(None);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => ServerTls::from_files(cert, key).map(Some),
            _ => Err(TlsError::Missing {
                missing: "certificate",
                flags: "--tls-cert and --tls-key (P2P_TLS_CERT, P2P_TLS_KEY)",
            }),
        }
    }

    /// How to verify the servers this binary calls.
    pub fn client(&self) -> Result<ClientTls, TlsError> {
        if self.insecure_plaintext {
            return Ok(ClientTls::Plaintext);
        }
        match &self.tls_ca {
            Some(ca) => ClientTls::from_ca_file(ca),
            None => Err(TlsError::Missing {
                missing: "CA",
                flags: "--tls-ca (P2P_TLS_CA)",
            }),
        }
    }
}

/// A server's certificate chain and key.
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM text.
    pub fn from_pem(cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        Self {
            identity: Identity::from_pem(cert_pem, key_pem),
        }
    }

    /// From PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self::from_pem(
            read(cert, "TLS certificate (--tls-cert)")?,
            read(key, "TLS key (--tls-key)")?,
        ))
    }

    /// The tonic server configuration.
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// How a client verifies the servers it calls.
#[derive(Debug, Clone)]
pub enum ClientTls {
    /// TLS, trusting only the deployment's CA.
    Verify(Arc<Certificate>),
    /// h2c, chosen explicitly with `--insecure-plaintext` (or by a test).
    Plaintext,
}

impl ClientTls {
    /// Trusts the CA in this PEM text.
    pub fn from_ca_pem(pem: impl AsRef<[u8]>) -> Self {
        Self::Verify(Arc::new(Certificate::from_pem(pem)))
    }

    /// Trusts the CA in this PEM file.
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsError> {
        Ok(Self::from_ca_pem(read(path, "CA certificate (--tls-ca)")?))
    }

    /// Whether calls are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Verify(_))
    }

    /// The URL for `addr` (`host:port` or a URL whose scheme agrees with
    /// this setting).
    pub fn url(&self, addr: &str) -> Result<String, TlsError> {
        let (scheme, rest) = match addr.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, addr),
        };
        let wanted = if self.is_tls() { "https" } else { "http" };
        match scheme {
            None => Ok(format!("{wanted}://{rest}")),
            Some(s) if s == wanted => Ok(addr.to_string()),
            Some(s) => Err(TlsError::Scheme {
                url: addr.to_string(),
                scheme: s.to_string(),
                why: if self.is_tls() {
                    "TLS is on (pass --insecure-plaintext to call without it)"
                } else {
                    "--insecure-plaintext is set"
                },
            }),
        }
    }

    /// The tonic client configuration, verifying the server's certificate
    /// against the dialled host name or IP address.
    pub fn config(&self) -> Option<ClientTlsConfig> {
        match self {
            Self::Verify(ca) => Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::clone(ca))
                    .timeout(HANDSHAKE_TIMEOUT),
            ),
            Self::Plaintext => None,
        }
    }

    /// Like [`ClientTls::config`], but verifying the certificate against
    /// `server_name` (the DNS name an address was resolved from) rather
    /// than the dialled IP address.
    pub fn config_for_name(&self, server_name: &str) -> Option<ClientTlsConfig> {
        self.config().map(|config| config.domain_name(server_name))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The deployment's certificate authority and the certificates it issues:
/// what `p2p-certs` runs, and what tests call to make a throwaway CA.
pub mod issue {
    use std::path::{Path, PathBuf};

    use chrono::Datelike;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
    };

    use super::TlsError;

    /// The CA's common name; deployments differ by key, not by name.
    pub const CA_NAME: &str = "P2P File Transfer deployment CA";
    /// Years a CA certificate is valid.
    pub const CA_YEARS: i32 = 10;
    /// Years a server or agent certificate is valid.
    pub const LEAF_YEARS: i32 = 2;

    /// What a leaf certificate is for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Role {
        /// auth-svc or index-svc: serves TLS.
        Server,
        /// An agent: serves PeerService and may present it as a client too.
        Agent,
    }

    /// A CA key and certificate in memory.
    pub struct Authority {
        key: KeyPair,
        cert: rcgen::Certificate,
    }

    impl std::fmt::Debug for Authority {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Authority").finish_non_exhaustive()
        }
    }

    /// A leaf certificate and its key, as PEM.
    #[derive(Debug, Clone)]
    pub struct Issued {
        /// The certificate.
        pub cert_pem: String,
        /// Its private key.
        pub key_pem: String,
    }

    fn ca_params() -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, CA_NAME);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (y, m, d) = today();
        params.not_before = date_time_ymd(y, m, d) - time_day();
        params.not_after = date_time_ymd(y + CA_YEARS, m, d.min(28));
        Ok(params)
    }

    fn today() -> (i32, u8, u8) {
        let now = chrono::Utc::now();
        (now.year(), now.month() as u8, now.day() as u8)
    }

    fn time_day() -> std::time::Duration {
        std::time::Duration::from_secs(86_400)
    }

    impl Authority {
        /// A new CA with a fresh key.
        pub fn generate() -> Result<Self, TlsError> {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            Ok(Self { key, cert })
        }

        /// The CA whose key is `key_pem`. Signing needs only the CA's name
        /// and key, so the certificate on disk need not be parsed.
        pub fn from_key_pem(key_pem: &str) -> Result<Self, TlsError> {
            let key = KeyPair::from_pem(key_pem)?;
            let cert = ca_params()?.self_signed(&key)?;
            Ok(Self { key, cert })
        }

        /// The CA certificate, PEM (what clients trust).
        pub fn cert_pem(&self) -> String {
            self.cert.pem()
        }

        /// The CA key, PEM (keep it secret).
        pub fn key_pem(&self) -> String {
            self.key.serialize_pem()
        }

        /// Issues a certificate named `name` for `hosts` (DNS names or IP
        /// addresses, each a subject alternative name).
        pub fn issue(&self, name: &str, hosts: &[String], role: Role) -> Result<Issued, TlsError> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(hosts.to_vec())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            params.distinguished_name = dn;
            params.is_ca = IsCa::ExplicitNoCa;
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = match role {
                Role::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
                Role::Agent => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            };
            let (y, m, d) = today();
            params.not_before = date_time_ymd(y, m, d) - time_day();
            params.not_after = date_time_ymd(y + LEAF_YEARS, m, d.min(28));
            let cert = params.signed_by(&key, &self.cert, &self.key)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }
    }

    /// The files of one deployment's certificates in a directory:
    /// `ca.pem`, `ca-key.pem`, and `NAME.pem` / `NAME-key.pem` per leaf.
    #[derive(Debug, Clone)]
    pub struct CertDir {
        /// The directory.
        pub dir: PathBuf,
    }

    impl CertDir {
        /// The directory at `dir` (created on first write).
        pub fn new(dir: impl Into<PathBuf>) -> Self {
            Self { dir: dir.into() }
        }

        /// The CA certificate clients trust.
        pub fn ca_cert(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }

        /// The CA key.
        pub fn ca_key(&self) -> PathBuf {
            self.dir.join("ca-key.pem")
        }

        /// A leaf's certificate.
        pub fn cert(&self, name: &str) -> PathBuf {
            self.dir.join(format!("{name}.pem"))
        }

        /// A leaf's key.
        pub fn key(&self, name: &str) -> PathBuf {
            self.dir.join(format!("{name}-key.pem"))
        }

        /// The CA in this directory, made first if there is none.
        /// Returns it and whether it was made now.
        pub fn ensure_ca(&self) -> Result<(Authority, bool), TlsError> {
            match std::fs::read_to_string(self.ca_key()) {
                Ok(pem) => Ok((Authority::from_key_pem(&pem)?, false)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let ca = Authority::generate()?;
                    write(&self.ca_key(), &ca.key_pem(), true)?;
                    write(&self.ca_cert(), &ca.cert_pem(), false)?;
                    Ok((ca, true))
                }
                Err(source) => Err(TlsError::Read {
                    what: "CA key",
                    path: self.ca_key(),
                    source,
                }),
            }
        }

        /// Issues `name` for `hosts` unless its files exist already (or
        /// `force`). Returns whether it was issued now.
        pub fn ensure_leaf(
            &self,
            ca: &Authority,
            name: &str,
            hosts: &[String],
            role: Role,
            force: bool,
        ) -> Result<bool, TlsError> {
            if !force && self.cert(name).exists() && self.key(name).exists() {
                return Ok(false);
            }
            let issued = ca.issue(name, hosts, role)?;
            write(&self.key(name), &issued.key_pem, true)?;
            write(&self.cert(name), &issued.cert_pem, false)?;
            Ok(true)
        }
    }

    /// Writes `text` to `path` (creating its directory), mode 0600 when
    /// `secret`, through a temporary file so a reader never sees half.
    fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_reloaded_ca_signs_leaves_that_chain_to_the_original() {
            let dir = tempfile::tempdir().unwrap();
            let certs = CertDir::new(dir.path());
            let (first, made) = certs.ensure_ca().unwrap();
            assert!(made);
            let (again, made) = certs.ensure_ca().unwrap();
            assert!(!made);
            assert_eq!(first.key_pem(), again.key_pem());
            assert!(
                certs
                    .ensure_leaf(&again, "auth", &["auth".into()], Role::Server, false)
                    .unwrap()
            );
            assert!(
                !certs
                    .ensure_leaf(&again, "auth", &["auth".into()], Role::Server, false)
                    .unwrap()
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(certs.key("auth"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

/// Throwaway certificates for tests and benchmarks.
pub mod testing {
    use std::path::Path;

    use super::issue::{CertDir, Role};
    use super::{ClientTls, TlsArgs, TlsError};

    /// Makes a CA and one certificate per `(name, hosts, role)` in `dir`,
    /// every leaf also valid for `localhost` and `127.0.0.1`.
    pub fn make(dir: &Path, leaves: &[(&str, &[&str], Role)]) -> Result<CertDir, TlsError> {
        let certs = CertDir::new(dir);
        let (ca, _) = certs.ensure_ca()?;
        for (name, hosts, role) in leaves {
            let mut all: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            all.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
            certs.ensure_leaf(&ca, name, &all, *role, true)?;
        }
        Ok(certs)
    }

    /// The flags a binary named `name` in `certs` is started with.
    pub fn args(certs: &CertDir, name: &str) -> TlsArgs {
        TlsArgs {
            tls_cert: Some(certs.cert(name)),
            tls_key: Some(certs.key(name)),
            tls_ca: Some(certs.ca_cert()),
            insecure_plaintext: false,
        }
    }

    /// A client trusting `certs`' CA.
    pub fn client(certs: &CertDir) -> ClientTls {
        ClientTls::from_ca_file(&certs.ca_cert()).expect("the CA file was just written")
    }
}
