//! Credential files and how a client presents them. A credential is an id plus a 32-byte
//! secret; the file holds the id on the first line and the secret in hex on the second
//! (the shape of `operator.cred` from `keys init`), mode 0600. The engine stores only
//! `crypto::credential_hash` of the secret. On the wire the id and the secret travel as
//! gRPC metadata (`x-vouchsafe-id`, `x-vouchsafe-secret`), over TLS outside loopback.

use anyhow::{Context, bail};
use engine::crypto::SecretKey;
use std::io::Write;
use std::path::Path;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

pub const ID_HEADER: &str = "x-vouchsafe-id";
pub const SECRET_HEADER: &str = "x-vouchsafe-secret";

/// An id and its secret, as read from a credential file.
#[derive(Clone)]
pub struct Credential {
    pub id: String,
    pub secret: SecretKey,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Credential {
    pub fn new(id: impl Into<String>, secret: SecretKey) -> Self {
        Self { id: id.into(), secret }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        crate::common::keys::warn_if_loose(path);
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("cannot read credential file {}", path.display()))?);
        Self::parse(&text, &path.display().to_string())
    }

    /// A credential file's text (`origin` names it in errors, which never echo its lines).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines();
        let id = lines.next().unwrap_or_default().trim().to_string();
        let secret_hex = lines.next().unwrap_or_default().trim();
        if id.is_empty() || secret_hex.len() != 64 {
            bail!("{origin} must hold an id line and a 64-hex-digit secret line");
        }
        // The id goes into request metadata and log lines: a token, never echoed back.
        if !engine::ids::is_valid_token(&id) {
            bail!("{origin}: the id line must be 1-64 characters of A-Z a-z 0-9 - _");
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(secret_hex, &mut bytes).map_err(|_| anyhow::anyhow!("{origin}: the secret line is not hex"))?;
        let secret = SecretKey::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(Self { id, secret })
    }

    /// Writes the credential file (mode 0600); refuses to overwrite one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).with_context(|| format!("cannot create credential file {} (it must not exist yet)", path.display()))?;
        let text = zeroize::Zeroizing::new(format!("{}\n{}\n", self.id, hex::encode(self.secret.expose())));
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    /// Puts the id and secret into a request's metadata.
    pub fn attach(&self, metadata: &mut MetadataMap) -> Result<(), tonic::Status> {
        let id = AsciiMetadataValue::try_from(self.id.as_str()).map_err(|_| tonic::Status::invalid_argument("the credential id is not ASCII"))?;
        let secret_hex = zeroize::Zeroizing::new(hex::encode(self.secret.expose()));
        let mut secret = AsciiMetadataValue::try_from(secret_hex.as_str()).map_err(|_| tonic::Status::internal("hex is ASCII"))?;
        secret.set_sensitive(true);
        metadata.insert(ID_HEADER, id);
        metadata.insert(SECRET_HEADER, secret);
        Ok(())
    }
}

/// A client interceptor that presents one credential on every call.
#[derive(Clone, Debug)]
pub struct Present(pub std::sync::Arc<Credential>);

impl tonic::service::Interceptor for Present {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.attach(request.metadata_mut())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.cred");
        let credential = Credential::new("m123", SecretKey::random());
        credential.save(&path).expect("saved");
        let loaded = Credential::load(&path).expect("loads");
        assert_eq!(loaded.id, "m123");
        assert!(loaded.secret.ct_eq(&credential.secret));
        assert!(credential.save(&path).is_err());
        assert!(!format!("{loaded:?}").contains(&hex::encode(credential.secret.expose())), "Debug never shows the secret");
        std::fs::write(dir.path().join("bad.cred"), "m1\nnot-hex\n").expect("write");
        assert!(Credential::load(&dir.path().join("bad.cred")).is_err());
    }

    /// An id read from a file is a token: one carrying an escape sequence (or a newline, a
    /// space) is refused, and the refusal does not echo it. Control: a token id loads.
    #[test]
    fn a_credential_id_that_is_not_a_token_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = hex::encode([7u8; 32]);
        for id in ["m1\u{1b}[2K", "m 1", "m1;rm"] {
            let path = dir.path().join("crafted.cred");
            std::fs::write(&path, format!("{id}\n{secret}\n")).expect("write");
            let refused = Credential::load(&path).expect_err("not a token");
            assert!(!format!("{refused:#}").contains(id) && !format!("{refused:#}").contains('\u{1b}'), "{refused:#}");
        }
        let path = dir.path().join("good.cred");
        std::fs::write(&path, format!("m1\n{secret}\n")).expect("write");
        assert_eq!(Credential::load(&path).expect("the control: a token id").id, "m1");
    }
}
