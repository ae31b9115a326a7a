//! `demo --node-tls`: a throwaway certificate authority made for one run, and a certificate
//! it signs for each delivery node (for 127.0.0.1 and localhost, where the demo's nodes
//! listen), so players fetch and preview over TLS and trust only that CA. The CA's private
//! key lives in memory for the run and is never written; its certificate is written to
//! `<data-dir>/node-tls/ca.pem` so `player fetch --node-ca` can reach the nodes afterwards.
//!
//! What deliberately does not live here: anything a deployment would use (an operator's CA
//! makes node certificates with openssl, deploy/README.md), TLS to the engine (`--ca`).

use crate::common::tls::ServerIdentity;
use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The names in each node certificate: where the demo's nodes listen.
const NODE_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A run's CA certificate (PEM), where it was written, and one identity per node.
pub struct NodePki {
    pub ca_pem: Vec<u8>,
    pub ca_path: PathBuf,
    pub identities: Vec<ServerIdentity>,
}

/// Makes the CA and `nodes` node identities, and writes the CA's certificate under
/// `data_dir`.
pub fn throwaway(data_dir: &Path, nodes: usize) -> anyhow::Result<NodePki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "Vouchsafe demo node CA (throwaway)");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().context("cannot generate the demo CA's key")?;
    let ca_cert = ca_params.self_signed(&ca_key).context("cannot sign the demo CA's certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut identities = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let mut params = CertificateParams::new(NODE_NAMES.iter().map(|name| name.to_string()).collect::<Vec<_>>()).context("node names")?;
        params.distinguished_name.push(DnType::CommonName, format!("demo node {i}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("cannot generate a demo node's key")?;
        let cert = params.signed_by(&key, &issuer).context("cannot sign a demo node's certificate")?;
        let identity = ServerIdentity::from_pem(cert.pem().into_bytes(), Zeroizing::new(key.serialize_pem().into_bytes()))
            .context("the demo's node certificate does not load")?;
        identities.push(identity);
    }
    let ca_pem = ca_cert.pem().into_bytes();
    let dir = data_dir.join("node-tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).with_context(|| format!("cannot write {}", ca_path.display()))?;
    Ok(NodePki { ca_pem, ca_path, identities })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CA file written is the one the identities chain to: a node certificate verifies
    /// under it as a server for 127.0.0.1 (rustls's own verifier, through tonic, is the
    /// end-to-end check in `tests/node_tls.rs`); here, the file and the count.
    #[test]
    fn the_ca_is_written_and_each_node_gets_an_identity() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = throwaway(dir.path(), 2).expect("pki");
        assert_eq!(pki.identities.len(), 2);
        assert_eq!(std::fs::read(&pki.ca_path).expect("ca.pem"), pki.ca_pem);
        assert!(crate::common::tls::load_ca(&pki.ca_path, "--node-ca").is_ok());
        let again = throwaway(dir.path(), 1).expect("pki");
        assert_ne!(again.ca_pem, pki.ca_pem, "a fresh CA each run");
    }
}
