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

use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub mod issue;
pub mod pin;
pub mod server;
pub mod setup;
pub mod testing;

pub use server::ServerTls;

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
    /// A certificate or key could not be parsed or used.
    #[error("{0}")]
    Pem(String),
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

/// How a client verifies the servers it calls.
#[derive(Debug, Clone)]
pub enum ClientTls {
    /// TLS, trusting only the deployment's CA, presenting a client
    /// certificate when one is set ([`ClientTls::with_identity`]).
    Verify {
        /// The deployment's CA.
        ca: Arc<Certificate>,
        /// This client's own certificate and key, if it has one.
        identity: Option<Identity>,
    },
    /// h2c, chosen explicitly with `--insecure-plaintext` (or by a test).
    Plaintext,
}

impl ClientTls {
    /// Trusts the CA in this PEM text.
    pub fn from_ca_pem(pem: impl AsRef<[u8]>) -> Self {
        Self::Verify {
            ca: Arc::new(Certificate::from_pem(pem)),
            identity: None,
        }
    }

    /// Trusts the CA in this PEM file.
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsError> {
        Ok(Self::from_ca_pem(read(path, "CA certificate (--tls-ca)")?))
    }

    /// Also presents this certificate (chain) and key as a client
    /// certificate; plaintext stays plaintext.
    pub fn with_identity(self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        match self {
            Self::Verify { ca, .. } => Self::Verify {
                ca,
                identity: Some(Identity::from_pem(cert_pem, key_pem)),
            },
            Self::Plaintext => Self::Plaintext,
        }
    }

    /// Whether calls are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Verify { .. })
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
            Self::Verify { ca, identity } => {
                let config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::clone(ca))
                    .timeout(HANDSHAKE_TIMEOUT);
                Some(match identity {
                    Some(identity) => config.identity(identity.clone()),
                    None => config,
                })
            }
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

impl ClientTls {
    /// A TLS connection to `addr` (`host:port`) outside tonic, offering the
    /// `alpn` protocols: the server's certificate is verified against the
    /// CA and the dialled host as a channel's is, within
    /// [`HANDSHAKE_TIMEOUT`]. No client certificate is presented (the data
    /// path authenticates with peer tokens). `InvalidInput` when this
    /// setting is plaintext or `addr` has no usable host.
    pub async fn connect_raw(
        &self,
        addr: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        use std::io::{Error, ErrorKind};
        let Self::Verify { ca, .. } = self else {
            return Err(Error::new(ErrorKind::InvalidInput, "TLS is off"));
        };
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.get_ref()) {
            let cert = cert.map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(name, tcp).await
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "TLS connection timed out"))?
    }
}

/// The SPKI SHA-256 fingerprint of a DER certificate: `sha256:` and 64
/// lowercase hex digits, the form `p2p join --fingerprint` takes (as
/// kubeadm's `--discovery-token-ca-cert-hash`). It names the CA's key, so
/// a CA certificate re-made from the same key keeps it.
pub fn spki_fingerprint(cert_der: &[u8]) -> Result<String, TlsError> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::Pem(format!("not an X.509 certificate: {e}")))?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex::encode(digest)))
}

/// [`spki_fingerprint`] of the first certificate in PEM text (a CA file).
pub fn pem_fingerprint(pem: impl AsRef<[u8]>) -> Result<String, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_ref())
        .map_err(|e| TlsError::Pem(format!("no PEM certificate: {e}")))?;
    spki_fingerprint(&der)
}

/// Whether `text` has the shape of a fingerprint (`sha256:` and 64 hex
/// digits, either case); returns it lowercased.
pub fn parse_fingerprint(text: &str) -> Option<String> {
    let text = text.trim();
    let hex = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// DER certificates as PEM text.
pub fn der_to_pem(ders: &[&[u8]]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        for line in text.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}
