//! Trust on a fingerprint: how a joining machine that has no CA file yet
//! learns the deployment's CA from the server it joins.
//!
//! The user gives the CA's SPKI fingerprint (from the server's first start,
//! an invite, or mDNS, which they compare). [`fetch_pinned_ca`] opens TLS to
//! the server and accepts the handshake only when one certificate of the
//! chain the server sends has that fingerprint and the server's own
//! certificate chains to it and names the address dialled. That CA is then
//! the only one the machine trusts, as kubeadm's
//! `--discovery-token-ca-cert-hash` does. Nothing secret is sent before the
//! check passes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{der_to_pem, spki_fingerprint};

/// Longest the connection and handshake may take together.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the CA could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The fingerprint is not `sha256:` and 64 hex digits.
    #[error("{0:?} is not a CA fingerprint: it looks like sha256: followed by 64 hex digits")]
    BadFingerprint(String),
    /// The address is not `host:port`.
    #[error("{0:?} is not host:port")]
    BadAddress(String),
    /// Nothing answered.
    #[error("cannot reach {addr}: {reason}; check the address and that auth-svc runs there")]
    Unreachable {
        /// Where.
        addr: String,
        /// The OS error or timeout.
        reason: String,
    },
    /// The server's CA is not the one expected.
    #[error(
        "the server at {addr} is vouched for by the CA {seen}, not {expected}: this is another \
         deployment, or someone in between. Compare with the fingerprint the server printed at its \
         first start (journalctl -u p2p-auth, or `p2p-certs fingerprint` on the server), or ask \
         for a new invite"
    )]
    Mismatch {
        /// Where.
        addr: String,
        /// The fingerprint asked for.
        expected: String,
        /// What the server's chain had, comma-separated.
        seen: String,
    },
    /// The chain holds the CA but the server's certificate does not verify
    /// against it (wrong name, expired, ...).
    #[error(
        "the server at {addr} has the expected CA, but its certificate is not valid for it: {reason}"
    )]
    Invalid {
        /// Where.
        addr: String,
        /// What rustls said.
        reason: String,
    },
    /// Any other handshake failure.
    #[error("TLS with {addr} failed: {reason} (is this auth-svc's TLS port?)")]
    Handshake {
        /// Where.
        addr: String,
        /// What failed.
        reason: String,
    },
}

/// What the verifier saw, for the error message.
#[derive(Debug, Default)]
struct Seen {
    fingerprints: Vec<String>,
    ca: Option<CertificateDer<'static>>,
    invalid: Option<String>,
}

#[derive(Debug)]
struct PinVerifier {
    expected: String,
    seen: Arc<Mutex<Seen>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut pinned = None;
        for (i, cert) in std::iter::once(end_entity).chain(intermediates).enumerate() {
            let fingerprint = spki_fingerprint(cert).unwrap_or_else(|_| "unreadable".into());
            if fingerprint == self.expected && pinned.is_none() {
                pinned = Some(cert.clone().into_owned());
            }
            // The CAs a chain names are after the server's own certificate.
            if i > 0 || intermediates.is_empty() {
                seen.fingerprints.push(fingerprint);
            }
        }
        let Some(ca) = pinned else {
            return Err(rustls::Error::General("CA fingerprint mismatch".into()));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        match verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(ok) => {
                seen.ca = Some(ca);
                Ok(ok)
            }
            Err(err) => {
                seen.invalid = Some(err.to_string());
                Err(err)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to `addr` (`host:port`, the host being what the server's
/// certificate must name) and returns the PEM of the CA whose SPKI
/// fingerprint is `fingerprint`, once the server proved it holds a
/// certificate that CA issued for that host.
pub async fn fetch_pinned_ca(addr: &str, fingerprint: &str) -> Result<String, PinError> {
    let expected = super::parse_fingerprint(fingerprint)
        .ok_or_else(|| PinError::BadFingerprint(fingerprint.to_string()))?;
    let (host, _) = addr
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| PinError::BadAddress(addr.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|_| PinError::BadAddress(addr.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PinError::Handshake {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier {
            expected: expected.clone(),
            seen: seen.clone(),
            provider,
        }))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp =
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| PinError::Unreachable {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
        connector
            .connect(server_name, tcp)
            .await
            .map(drop)
            .map_err(|e| {
                let reason = e.to_string();
                let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(invalid) = &seen.invalid {
                    PinError::Invalid {
                        addr: addr.to_string(),
                        reason: invalid.clone(),
                    }
                } else if !seen.fingerprints.is_empty() && seen.ca.is_none() {
                    PinError::Mismatch {
                        addr: addr.to_string(),
                        expected: expected.clone(),
                        seen: seen.fingerprints.join(", "),
                    }
                } else {
                    PinError::Handshake {
                        addr: addr.to_string(),
                        reason,
                    }
                }
            })
    };
    tokio::time::timeout(PIN_TIMEOUT, attempt)
        .await
        .map_err(|_| PinError::Unreachable {
            addr: addr.to_string(),
            reason: format!("no TLS handshake within {PIN_TIMEOUT:?}"),
        })??;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let ca = seen.ca.as_ref().ok_or_else(|| PinError::Handshake {
        addr: addr.to_string(),
        reason: "the handshake finished without a verified CA".into(),
    })?;
    Ok(der_to_pem(&[ca.as_ref()]))
}

#[cfg(test)]
mod tests {
    use super::super::issue::{CertDir, Role};
    use super::super::{ServerTls, pem_fingerprint};
    use super::*;

    /// A TLS server on 127.0.0.1 presenting `certs`' "server" leaf, for
    /// one handshake per connection.
    async fn serve(certs: &CertDir) -> String {
        let tls = ServerTls::from_files(&certs.cert("server"), &certs.key("server")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (mut rx, run) = super::super::server::accept(listener, tls.acceptor().unwrap());
        tokio::spawn(run);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        addr
    }

    fn deployment(dir: &std::path::Path, hosts: &[&str]) -> CertDir {
        let certs = CertDir::new(dir);
        let (ca, _) = certs.ensure_ca().unwrap();
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        certs
            .ensure_leaf(&ca, "server", &hosts, Role::Server, true)
            .unwrap();
        certs
    }

    #[tokio::test]
    async fn the_pinned_ca_is_returned_and_another_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let certs = deployment(dir.path(), &["127.0.0.1"]);
        let addr = serve(&certs).await;
        let ca_pem = std::fs::read_to_string(certs.ca_cert()).unwrap();
        let fingerprint = pem_fingerprint(&ca_pem).unwrap();

        let fetched = fetch_pinned_ca(
            &addr,
            &fingerprint.to_uppercase().replace("SHA256", "sha256"),
        )
        .await
        .unwrap();
        assert_eq!(pem_fingerprint(&fetched).unwrap(), fingerprint);

        let other = format!("sha256:{}", "ab".repeat(32));
        let err = fetch_pinned_ca(&addr, &other).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PinError::Mismatch { .. }), "{text}");
        assert!(
            text.contains(&fingerprint) && text.contains(&other),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_server_certificate_for_another_name_is_refused_even_with_the_right_ca() {
        let dir = tempfile::tempdir().unwrap();
        let certs = deployment(dir.path(), &["auth.example"]);
        let addr = serve(&certs).await;
        let fingerprint = pem_fingerprint(std::fs::read(certs.ca_cert()).unwrap()).unwrap();
        let err = fetch_pinned_ca(&addr, &fingerprint).await.unwrap_err();
        assert!(matches!(err, PinError::Invalid { .. }), "{err}");
    }

    #[tokio::test]
    async fn malformed_fingerprints_and_silent_addresses_fail_clearly() {
        assert!(matches!(
            fetch_pinned_ca("127.0.0.1:1", "sha256:abc").await,
            Err(PinError::BadFingerprint(_))
        ));
        let fingerprint = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            fetch_pinned_ca("127.0.0.1:1", &fingerprint).await,
            Err(PinError::Unreachable { .. })
        ));
        assert!(matches!(
            fetch_pinned_ca("nohost", &fingerprint).await,
            Err(PinError::BadAddress(_))
        ));
    }
}
