//! TLS material read from PEM files, checked at load so a wrong file is named before any
//! socket opens: a server's identity (certificate chain and private key: the engine's
//! `[tls]`, the node's `--tls-cert`/`--tls-key`) and a CA that a client trusts (`--ca`,
//! `--node-ca`). rustls (ring) does the TLS itself, through tonic.
//!
//! What deliberately does not live here: choosing between TLS and plain text (`plaintext`),
//! certificate issuance (an operator's CA, or the demo's throwaway one). A private key's
//! bytes never reach a message: a key file that does not parse is named, its content is not
//! quoted (the PEM parser's own errors can quote a line of it).

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use zeroize::Zeroizing;

/// Longest a client may take over its TLS handshake before the server drops the
/// connection (a client that opens a connection and never finishes would hold it).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// A server's certificate chain and private key, both PEM, checked to parse.
#[derive(Clone)]
pub struct ServerIdentity {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Reads and checks `cert` (PEM certificates, the leaf first) and `key` (one PEM private
    /// key: PKCS#8, PKCS#1 or SEC1). Each error names the file at fault.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_pem = read(cert, "TLS certificate")?;
        let key_pem = Zeroizing::new(read(key, "TLS private key")?);
        let identity = Self::from_pem(cert_pem, key_pem).map_err(|error| match error {
            PemError::Certificate(why) => anyhow::anyhow!("the TLS certificate file {} {why}", cert.display()),
            PemError::Key(why) => anyhow::anyhow!("the TLS private key file {} {why}", key.display()),
        })?;
        // rustls itself: a certificate that does not parse as X.509, or a key that is not
        // the certificate's, is refused here, naming both files, rather than at serve time.
        if let Err(error) = tonic::transport::Server::builder().tls_config(identity.server_config()) {
            bail!(
                "the TLS certificate {} and private key {} do not make a TLS identity ({error}); is the key the certificate's?",
                cert.display(),
                key.display()
            );
        }
        Ok(identity)
    }

    /// An identity from PEM already in memory (the demo's throwaway certificates).
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Zeroizing<Vec<u8>>) -> Result<Self, PemError> {
        check_certificates(&cert_pem).map_err(PemError::Certificate)?;
        if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
            return Err(PemError::Key("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"));
        }
        Ok(Self { cert_pem, key_pem })
    }

    /// tonic's server configuration for this identity, with [`HANDSHAKE_TIMEOUT_MS`].
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, self.key_pem.as_slice()))
            .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
    }
}

/// Which half of an identity does not parse, and why (never quoting the key).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("the certificate {0}")]
    Certificate(&'static str),
    #[error("the private key {0}")]
    Key(&'static str),
}

/// Reads a CA certificate file (PEM, one or more certificates) a client trusts, checked to
/// parse; `what` names the flag in errors (`--ca`, `--node-ca`).
pub fn load_ca(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem = read(path, what)?;
    if let Err(why) = check_certificates(&pem) {
        bail!("{what} {} {why}", path.display());
    }
    Ok(pem)
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} file {}", path.display()))
}

fn check_certificates(pem: &[u8]) -> Result<(), &'static str> {
    let mut certificates = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|_| "is not valid PEM")?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("ECDSA P-256 key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("names").self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem())
    }

    /// A missing file, a certificate file that holds a key and a key file that holds a
    /// certificate are each refused naming the file at fault, and a key's content never
    /// appears in the message. Control: the right files load.
    #[test]
    fn a_bad_pem_is_named_and_a_key_never_quoted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = pair();
        let cert_path = dir.path().join("node.pem");
        let key_path = dir.path().join("node.key");
        std::fs::write(&cert_path, &cert).expect("write");
        std::fs::write(&key_path, &key).expect("write");
        ServerIdentity::load(&cert_path, &key_path).expect("the right files load");
        // A certificate with another certificate's key: both files named.
        let (_, other_key) = pair();
        let other_key_path = dir.path().join("other.key");
        std::fs::write(&other_key_path, &other_key).expect("write");
        let mismatched = format!("{:#}", ServerIdentity::load(&cert_path, &other_key_path).expect_err("not the certificate's key"));
        assert!(mismatched.contains("node.pem") && mismatched.contains("other.key"), "{mismatched}");
        assert!(!mismatched.contains(other_key.lines().nth(1).expect("a key line")), "{mismatched}");
        assert_eq!(load_ca(&cert_path, "--node-ca").expect("a certificate is a CA file"), cert.as_bytes());

        let missing = ServerIdentity::load(&dir.path().join("absent.pem"), &key_path).expect_err("missing");
        assert!(format!("{missing:#}").contains("absent.pem"), "{missing:#}");
        let swapped = format!("{:#}", ServerIdentity::load(&key_path, &key_path).expect_err("a key as the certificate"));
        assert!(swapped.contains("TLS certificate file") && swapped.contains("node.key") && swapped.contains("no PEM certificate"), "{swapped}");
        let swapped = format!("{:#}", ServerIdentity::load(&cert_path, &cert_path).expect_err("a certificate as the key"));
        assert!(swapped.contains("TLS private key file") && swapped.contains("node.pem"), "{swapped}");
        // A key file with a broken line: the message names the file, not the line.
        let broken = key.replace("-----BEGIN PRIVATE KEY-----", "-----BEGIN PRIVATE KEY");
        std::fs::write(&key_path, &broken).expect("write");
        let refused = format!("{:#}", ServerIdentity::load(&cert_path, &key_path).expect_err("broken key"));
        assert!(refused.contains("node.key"), "{refused}");
        let body_line = key.lines().nth(1).expect("a base64 line");
        assert!(!refused.contains(body_line) && !refused.contains("BEGIN"), "{refused}");
        let not_a_ca = format!("{:#}", load_ca(&key_path, "--node-ca").expect_err("a key is no CA"));
        assert!(not_a_ca.contains("--node-ca") && not_a_ca.contains("node.key") && !not_a_ca.contains(body_line), "{not_a_ca}");
    }
}
