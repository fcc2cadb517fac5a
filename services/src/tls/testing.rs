//! Throwaway certificates for tests and benchmarks.

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
