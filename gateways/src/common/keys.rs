//! The key directory written by `vouchsafe keys init` (CLI.md): `engine.pem` (RSA private,
//! 0600), `engine.pub.pem`, `royalty-master.key` (0600) and `operator.cred` (0600).
//! Key material lives only in these files; nothing here prints or logs it.

use anyhow::{Context, bail};
use engine::crypto::{self, RsaPrivate, SecretKey};
use std::io::Write;
use std::path::Path;

pub const ENGINE_PEM: &str = "engine.pem";
pub const ENGINE_PUB_PEM: &str = "engine.pub.pem";
pub const ROYALTY_MASTER: &str = "royalty-master.key";
pub const OPERATOR_CRED: &str = "operator.cred";
/// The engine's RSA key size.
pub const ENGINE_RSA_BITS: usize = 2048;

fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// Writes a fresh key directory; refuses to overwrite existing keys.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create key directory {}", dir.display()))?;
    for name in [ENGINE_PEM, ENGINE_PUB_PEM, ROYALTY_MASTER, OPERATOR_CRED] {
        if dir.join(name).exists() {
            bail!("{} already exists; keys init never overwrites keys (use another --out directory)", dir.join(name).display());
        }
    }
    let private = RsaPrivate::generate(ENGINE_RSA_BITS)?;
    let public_pem = private.public().to_pem()?;
    write_secret(&dir.join(ENGINE_PEM), private.to_pkcs8_pem()?.as_bytes())?;
    std::fs::write(dir.join(ENGINE_PUB_PEM), public_pem).context("cannot write engine.pub.pem")?;
    let master = SecretKey::random();
    write_secret(&dir.join(ROYALTY_MASTER), zeroize::Zeroizing::new(hex::encode(master.expose())).as_bytes())?;
    let operator_secret = SecretKey::random();
    let cred = zeroize::Zeroizing::new(format!("operator\n{}\n", hex::encode(operator_secret.expose())));
    write_secret(&dir.join(OPERATOR_CRED), cred.as_bytes())?;
    Ok(())
}

/// Whether `dir` holds no keys yet (missing or empty).
pub fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()).unwrap_or(true)
}

pub fn load_engine_private(dir: &Path) -> anyhow::Result<RsaPrivate> {
    let path = dir.join(ENGINE_PEM);
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}; run `vouchsafe keys init --out {}`", path.display(), dir.display()))?,
    );
    RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", path.display()))
}

/// The engine's public key: all an auditor needs besides the royalty master key.
pub fn load_engine_public(dir: &Path) -> anyhow::Result<crypto::RsaPublic> {
    let path = dir.join(ENGINE_PUB_PEM);
    let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    crypto::RsaPublic::from_pem(&pem).with_context(|| format!("{} is not an RSA public key", path.display()))
}

pub fn load_royalty_master(dir: &Path) -> anyhow::Result<SecretKey> {
    let path = dir.join(ROYALTY_MASTER);
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| anyhow::anyhow!("{} must hold 64 hex digits", path.display()))?;
    let key = SecretKey::from_bytes(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(key)
}

/// The operator's id from `operator.cred` (its secret stays in the file).
pub fn load_operator_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(OPERATOR_CRED);
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?);
    let id = text.lines().next().unwrap_or_default().trim().to_string();
    if id.is_empty() || text.lines().nth(1).is_none_or(|secret| secret.trim().len() != 64) {
        bail!("{} must hold an id line and a 64-hex-digit secret line", path.display());
    }
    Ok(id)
}

/// Checks that a key directory is complete and consistent: every file loads and the
/// public key matches the private one.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let private = load_engine_private(dir)?;
    let public = crypto::RsaPublic::from_pem(&std::fs::read_to_string(dir.join(ENGINE_PUB_PEM))?)?;
    if public != private.public() {
        bail!("engine.pub.pem does not match engine.pem");
    }
    load_royalty_master(dir)?;
    load_operator_id(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_files_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        init(dir.path()).expect("keys init");
        check_dir(dir.path()).expect("key dir loads");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in [ENGINE_PEM, ROYALTY_MASTER, OPERATOR_CRED] {
                let mode = std::fs::metadata(dir.path().join(name)).expect("file exists").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{name} must be private");
            }
        }
        let again = init(dir.path()).expect_err("second init must refuse");
        assert!(again.to_string().contains("never overwrites"));
    }
}
