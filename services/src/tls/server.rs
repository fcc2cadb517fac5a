//! A server's TLS identity, swappable while it serves: an agent whose
//! address changed gets a certificate for the new address and presents it
//! on the next handshake, without dropping the transfers in flight.
//!
//! [`ServerTls`] is the rustls configuration every gRPC server uses
//! (through [`crate::serve::GrpcServer::tls`]); [`accept`] runs handshakes
//! for a listener, each on its own task bounded by
//! [`super::HANDSHAKE_TIMEOUT`], so a slow client never holds up another.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{HANDSHAKE_TIMEOUT, TlsError, read};

/// Most handshakes in progress at once on one listener; more wait in the
/// kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// A server's certificate chain and key, replaceable while serving, and
/// optionally the CA whose client certificates it accepts.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<Current>,
    client_ca: Option<Arc<rustls::RootCertStore>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("verifies_clients", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// The identity presented now.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Parses a PEM chain and key into what rustls presents.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("the certificate is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem(format!("the key is not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Pem(format!("the key cannot sign: {e}")))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        TlsError::Pem(format!(
            "the key does not belong to the certificate ({e}); give the key made with it"
        ))
    })?;
    Ok(key)
}

impl ServerTls {
    /// From PEM text: the certificate (or its chain, leaf first) and key.
    pub fn from_pem(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        let key = certified_key(cert_pem.as_ref(), key_pem.as_ref())?;
        Ok(Self {
            current: Arc::new(Current(RwLock::new(Arc::new(key)))),
            client_ca: None,
        })
    }

    /// From PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(
            read(cert, "TLS certificate (--tls-cert)")?,
            read(key, "TLS key (--tls-key)")?,
        )
    }

    /// Presents this certificate and key from the next handshake on;
    /// connections already open keep theirs.
    pub fn replace(
        &self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<(), TlsError> {
        let key = certified_key(cert_pem.as_ref(), key_pem.as_ref())?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// Also asks clients for a certificate signed by this CA. A client
    /// may still connect without one; one that presents a certificate the
    /// CA did not sign (or an expired one) is refused at the handshake.
    /// Handlers read it with `request.peer_certs()`.
    pub fn verify_clients_with(mut self, ca_pem: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_ref()) {
            let cert = cert.map_err(|e| TlsError::Pem(format!("the CA is not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Pem(format!("the CA certificate is not usable: {e}")))?;
        }
        self.client_ca = Some(Arc::new(roots));
        Ok(self)
    }

    /// The rustls acceptor for one listener (HTTP/2 by ALPN).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        self.acceptor_for(&[])
    }

    /// The rustls acceptor for one listener that also offers `extra` ALPN
    /// protocols, preferred to HTTP/2 when a client offers them; the
    /// caller tells the connections apart by
    /// [`negotiated`].
    pub fn acceptor_for(&self, extra: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pem(format!("TLS versions: {e}")))?;
        let builder = match &self.client_ca {
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Pem(format!("client verification: {e}")))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.current.clone());
        config.alpn_protocols = extra
            .iter()
            .map(|p| p.to_vec())
            .chain([b"h2".to_vec()])
            .collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Accepts TCP connections on `listener` and sends each finished TLS
/// stream to the returned channel, until the receiver is dropped. The
/// accept loop and its handshake tasks are owned by the returned future's
/// task set: the caller spawns nothing, and dropping the future stops them.
pub fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> (
    mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>>,
    impl std::future::Future<Output = ()> + Send,
) {
    let (tx, rx) = mpsc::channel(64);
    let run = async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = tx.closed() => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and the like: wait a moment instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            tune(&stream);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            handshakes.spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
        handshakes.shutdown().await;
    };
    (rx, run)
}

/// The ALPN protocol a finished handshake settled on, if any.
pub fn negotiated(stream: &TlsStream<TcpStream>) -> Option<&[u8]> {
    stream.get_ref().1.alpn_protocol()
}

/// Closes `stream` once data it sent has gone unacknowledged for `after`
/// (`TCP_USER_TIMEOUT`): for a long-lived stream that sends little, such
/// as a holdings stream, whose far end may vanish (a laptop leaving the
/// Wi-Fi) without its writes ever filling the socket buffer.
pub fn close_unacknowledged_after(
    stream: &TcpStream,
    after: std::time::Duration,
) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(after))
}

/// The socket options every server connection gets.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(60));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unacknowledged_data_closes_the_connection_after_the_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let bound = std::time::Duration::from_secs(30);
        close_unacknowledged_after(&client, bound).unwrap();
        assert_eq!(
            socket2::SockRef::from(&client).tcp_user_timeout().unwrap(),
            Some(bound)
        );
    }
}
