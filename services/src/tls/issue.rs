//! The deployment's certificate authority and the certificates it issues:
//! what `p2p-certs` runs, what auth-svc signs agents' requests with, and
//! what tests call to make a throwaway CA.

use std::path::{Path, PathBuf};

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
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
    /// The CA certificate as clients have it (its file), when it was read
    /// from one: what [`Authority::cert_pem`] returns and issued chains
    /// end with.
    cert_pem: Option<String>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// Longest certificate request accepted.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The URI subject alternative name that binds an agent certificate to
/// its account: this prefix and the account's id.
pub const ACCOUNT_URI_PREFIX: &str = "urn:p2p:account:";

/// Why an agent's certificate request was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The request is not a usable PKCS#10 request.
    #[error("{0}")]
    Invalid(String),
    /// It asks for a name or address other than the caller's own.
    #[error(
        "the certificate request asks for {asked}, but a certificate names only the address \
         the request came from ({seen}); send a request without names, or with that address"
    )]
    OtherName {
        /// What it asked for.
        asked: String,
        /// The caller's address as seen.
        seen: std::net::IpAddr,
    },
}

/// A new key pair and a certificate request for it with no names (auth-svc
/// names the address it sees): `(key_pem, csr_pem)`.
pub fn new_key_and_request() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The account id an agent certificate (DER) is bound to, from its
/// `urn:p2p:account:` URI name; `None` for any other certificate.
pub fn account_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                uri.strip_prefix(ACCOUNT_URI_PREFIX).map(str::to_string)
            }
            _ => None,
        })
}

/// The names (DNS names and IP addresses, as text) the first certificate
/// in PEM text is valid for, and its validity: `(names, not_before,
/// not_after)`, Unix seconds.
pub fn names_and_validity(cert_pem: &[u8]) -> Result<(Vec<String>, i64, i64), TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| TlsError::Pem(format!("the certificate is not PEM: {e}")))?;
    der_names_and_validity(&der)
}

fn der_names_and_validity(cert_der: &[u8]) -> Result<(Vec<String>, i64, i64), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::Pem(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok((
        names,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
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
        Ok(Self {
            key,
            cert,
            cert_pem: None,
        })
    }

    /// The CA whose key is `key_pem`. Signing needs only the CA's name
    /// and key, so the certificate on disk need not be parsed.
    pub fn from_key_pem(key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self {
            key,
            cert,
            cert_pem: None,
        })
    }

    /// The CA whose key is `key_pem` and whose certificate, as clients
    /// have it, is `cert_pem`.
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, TlsError> {
        let mut ca = Self::from_key_pem(key_pem)?;
        if super::pem_fingerprint(cert_pem)? != ca.fingerprint()? {
            return Err(TlsError::Pem(
                "the CA certificate does not belong to the CA key beside it".into(),
            ));
        }
        ca.cert_pem = Some(cert_pem.to_string());
        Ok(ca)
    }

    /// The CA certificate, PEM (what clients trust).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone().unwrap_or_else(|| self.cert.pem())
    }

    /// The CA's SPKI fingerprint (see [`super::spki_fingerprint`]).
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        super::spki_fingerprint(self.cert.der())
    }

    /// Signs an agent's certificate request (PKCS#10, PEM) for exactly
    /// `address`, bound to the account (`username`, `user_id`), valid for
    /// `lifetime` from now. The request's own subject is ignored; a name or
    /// address in it other than `address` refuses the request. Returns the
    /// chain (the certificate, then the CA) and its expiry.
    pub fn sign_agent_request(
        &self,
        csr_pem: &str,
        address: std::net::IpAddr,
        username: &str,
        user_id: &str,
        lifetime: std::time::Duration,
    ) -> Result<(String, time::OffsetDateTime), SignError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(SignError::Invalid(format!(
                "the certificate request is {} bytes; at most {MAX_CSR_BYTES}",
                csr_pem.len()
            )));
        }
        let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            SignError::Invalid(format!(
                "not a signed PKCS#10 certificate request in PEM ({e})"
            ))
        })?;
        let address = address.to_canonical();
        for name in &request.params.subject_alt_names {
            let allowed =
                matches!(name, rcgen::SanType::IpAddress(ip) if ip.to_canonical() == address);
            if !allowed {
                return Err(SignError::OtherName {
                    asked: format!("{name:?}"),
                    seen: address,
                });
            }
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, username);
        params.distinguished_name = dn;
        let account_uri = format!("{ACCOUNT_URI_PREFIX}{user_id}");
        params.subject_alt_names = vec![
            rcgen::SanType::IpAddress(address),
            rcgen::SanType::URI(
                account_uri
                    .clone()
                    .try_into()
                    .map_err(|_| SignError::Invalid(format!("{account_uri:?} is not a URI")))?,
            ),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks that run behind the CA's.
        params.not_before = now - time::Duration::minutes(10);
        params.not_after = now + lifetime;
        let not_after = params.not_after;
        let signed = rcgen::CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.cert, &self.key)
        .map_err(|e| SignError::Invalid(format!("cannot sign it: {e}")))?;
        Ok((format!("{}{}", signed.pem(), self.cert_pem()), not_after))
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
        // The chain ends with the CA, so a machine joining with only the
        // CA's fingerprint can check the server (see `super::pin`).
        Ok(Issued {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem()),
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
            Ok(pem) => match std::fs::read_to_string(self.ca_cert()) {
                Ok(cert) => Ok((Authority::from_pem(&pem, &cert)?, false)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Ok((Authority::from_key_pem(&pem)?, false))
                }
                Err(source) => Err(TlsError::Read {
                    what: "CA certificate",
                    path: self.ca_cert(),
                    source,
                }),
            },
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
pub fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
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
