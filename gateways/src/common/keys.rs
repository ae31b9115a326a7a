//! The key directory written by `vouchsafe keys init` (CLI.md): `engine.pem` (RSA private,
//! 0600), `engine.pub.pem`, `royalty-master.key` (0600), `operator.cred` (0600), and the
//! checkpoint key `checkpoint.key` (Ed25519, 0600, Go's note private key line) with its
//! verifier key `checkpoint.vkey` (the C2SP vkey line; the key name is the log's origin).
//! A directory written before checkpoints has neither: its engine seals without one.
//! Key material lives only in these files; nothing here prints or logs it.

use anyhow::{Context, bail};
use engine::crypto::{self, RsaPrivate, SecretKey};
use engine::note::{NoteSigner, NoteVerifier};
use std::io::Write;
use std::path::Path;

pub const ENGINE_PEM: &str = "engine.pem";
pub const ENGINE_PUB_PEM: &str = "engine.pub.pem";
pub const ROYALTY_MASTER: &str = "royalty-master.key";
pub const OPERATOR_CRED: &str = "operator.cred";
pub const CHECKPOINT_KEY: &str = "checkpoint.key";
pub const CHECKPOINT_VKEY: &str = "checkpoint.vkey";
/// Engine keys rotated out, `retired/<key id>.pem` (0600): media wrapped for them still unwrap.
pub const RETIRED_DIR: &str = "retired";
/// The token keys (0600; `<id> <64 hex digits>` lines, newest first, `engine::token_keys`),
/// written by the first rotation so tokens stay what they were (before it, token key 1's
/// material derives from `engine.pem`).
pub const TOKEN_KEY: &str = "token.key";
/// Checkpoint vkeys rotated out, `retired/checkpoint.vkeys`, newest first: what they
/// signed still verifies. `checkpoint.vkey` stays the one line of the current key.
pub const RETIRED_CHECKPOINT_VKEYS: &str = "checkpoint.vkeys";
/// The engine's RSA key size.
pub const ENGINE_RSA_BITS: usize = 2048;

/// Permission bits a file holding a secret must not have: any access by group or others.
const LOOSE_BITS: u32 = 0o077;

/// The mode of `path` when group or others may access it (a key or credential file that
/// should be 0600, a key directory that should be 0700); `None` when it is tight, or on
/// platforms without Unix modes.
pub fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & LOOSE_BITS != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Warns (at load, never refusing: the operator decides) when a secret's file is open to
/// group or others, naming the file and the fix. The warning carries no key material.
pub fn warn_if_loose(path: &Path) {
    if let Some(mode) = loose_mode(path) {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "a key or credential file is readable by others; chmod 600 it (700 for a directory)");
    }
}

/// Writes `contents` to a new file only its owner may read (0600).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode through `open`: tighten it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).with_context(|| format!("cannot make {} private", path.display()))?;
    }
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

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

/// Writes a fresh key directory; refuses to overwrite existing keys. The checkpoint key's
/// name (the log's origin) is `vouchsafe.local/royalty/<engine key id>`.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    init_with_origin(dir, None)
}

/// As `init`, naming the log's origin (a schema-less URL, no spaces or '+').
pub fn init_with_origin(dir: &Path, origin: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create key directory {}", dir.display()))?;
    // Only the owner may list or enter the key directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    for name in [ENGINE_PEM, ENGINE_PUB_PEM, ROYALTY_MASTER, OPERATOR_CRED, CHECKPOINT_KEY, CHECKPOINT_VKEY] {
        if dir.join(name).exists() {
            bail!("{} already exists; keys init never overwrites keys (use another --out directory)", dir.join(name).display());
        }
    }
    let private = RsaPrivate::generate(ENGINE_RSA_BITS)?;
    let origin = origin.map_or_else(|| format!("vouchsafe.local/royalty/{}", private.public().key_id()), str::to_string);
    let checkpoint = NoteSigner::generate(&origin).with_context(|| format!("--origin {origin:?} cannot name a checkpoint key"))?;
    let public_pem = private.public().to_pem()?;
    write_secret(&dir.join(ENGINE_PEM), private.to_pkcs8_pem()?.as_bytes())?;
    std::fs::write(dir.join(ENGINE_PUB_PEM), public_pem).context("cannot write engine.pub.pem")?;
    let master = SecretKey::random();
    write_secret(&dir.join(ROYALTY_MASTER), zeroize::Zeroizing::new(hex::encode(master.expose())).as_bytes())?;
    let operator_secret = SecretKey::random();
    let cred = zeroize::Zeroizing::new(format!("operator\n{}\n", hex::encode(operator_secret.expose())));
    write_secret(&dir.join(OPERATOR_CRED), cred.as_bytes())?;
    write_secret(&dir.join(CHECKPOINT_KEY), zeroize::Zeroizing::new(format!("{}\n", checkpoint.to_private_line())).as_bytes())?;
    std::fs::write(dir.join(CHECKPOINT_VKEY), format!("{}\n", checkpoint.verifier().vkey())).context("cannot write checkpoint.vkey")?;
    Ok(())
}

/// A witness's key files in `dir`: `witness.key` (0600) and `witness.vkey`; the vkey.
pub fn init_witness(dir: &Path, name: &str) -> anyhow::Result<String> {
    let key = dir.join("witness.key");
    if key.exists() {
        anyhow::bail!("{} exists: a witness keeps its key (its vkey is in logs' policies)", key.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cosigner = engine::cosignature::Cosigner::generate(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let line = zeroize::Zeroizing::new(cosigner.to_private_line());
    write_private(&key, format!("{}\n", line.as_str()).as_bytes())?;
    let vkey = cosigner.verifier().vkey();
    std::fs::write(dir.join("witness.vkey"), format!("{vkey}\n")).with_context(|| format!("cannot write {}", dir.join("witness.vkey").display()))?;
    Ok(vkey)
}

/// The checkpoint signing key, `None` in a key directory written before checkpoints.
pub fn load_checkpoint_key(dir: &Path) -> anyhow::Result<Option<NoteSigner>> {
    let path = dir.join(CHECKPOINT_KEY);
    if !path.exists() {
        return Ok(None);
    }
    warn_if_loose(&path);
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?);
    // The error names the file, never its contents.
    let signer =
        NoteSigner::from_private_line(&text).map_err(|_| anyhow::anyhow!("{} is not a note private key (PRIVATE+KEY+<name>+<id>+<key>)", path.display()))?;
    Ok(Some(signer))
}

/// The checkpoint verifier key from `file` (a `checkpoint.vkey`).
pub fn load_checkpoint_vkey_file(file: &Path) -> anyhow::Result<NoteVerifier> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    NoteVerifier::from_vkey(&text).with_context(|| format!("{} is not a C2SP vkey line (<name>+<key id>+<key>)", file.display()))
}

/// The checkpoint verifier key of a key directory, `None` when it has none; with the keys
/// it replaced (`retired/checkpoint.vkeys`) accepted too.
pub fn load_checkpoint_vkey(dir: &Path) -> anyhow::Result<Option<NoteVerifier>> {
    let path = dir.join(CHECKPOINT_VKEY);
    if !path.exists() {
        return Ok(None);
    }
    let current = load_checkpoint_vkey_file(&path)?;
    let retired = dir.join(RETIRED_DIR).join(RETIRED_CHECKPOINT_VKEYS);
    if !retired.exists() {
        return Ok(Some(current));
    }
    let older = load_checkpoint_vkey_file(&retired)?;
    current.with_older(&older).map(Some).with_context(|| format!("{} names another log than {}", retired.display(), path.display()))
}

/// `vouchsafe keys rotate checkpoint`: a new checkpoint key of the same name (the log's
/// origin); the current vkey goes first into `retired/checkpoint.vkeys`, then the new key
/// and vkey are staged and renamed in, `checkpoint.key` last (a rotation stopped between
/// the two renames is finished at load). The old private key is not kept: nothing needs
/// to sign with it again. Returns (old vkey, new vkey).
pub fn rotate_checkpoint(dir: &Path) -> anyhow::Result<(String, String)> {
    finish_interrupted_rotation(dir)?;
    let Some(old) = load_checkpoint_key(dir)? else {
        bail!("{} has no checkpoint.key to rotate (keys init writes one)", dir.display());
    };
    let new = NoteSigner::generate(old.name()).context("a new checkpoint key")?;
    let retired = private_dir(&dir.join(RETIRED_DIR))?.join(RETIRED_CHECKPOINT_VKEYS);
    let mut lines = vec![old.verifier().vkey()];
    if retired.exists() {
        lines.extend(load_checkpoint_vkey_file(&retired)?.vkeys());
    }
    std::fs::write(&retired, format!("{}\n", lines.join("\n"))).with_context(|| format!("cannot write {}", retired.display()))?;
    let staged_vkey = dir.join(format!("{CHECKPOINT_VKEY}.new"));
    std::fs::write(&staged_vkey, format!("{}\n", new.verifier().vkey())).with_context(|| format!("cannot write {}", staged_vkey.display()))?;
    let staged_key = dir.join(format!("{CHECKPOINT_KEY}.new"));
    write_private(&staged_key, zeroize::Zeroizing::new(format!("{}\n", new.to_private_line())).as_bytes())?;
    std::fs::rename(&staged_vkey, dir.join(CHECKPOINT_VKEY)).context("cannot replace checkpoint.vkey")?;
    std::fs::rename(&staged_key, dir.join(CHECKPOINT_KEY)).context("cannot replace checkpoint.key")?;
    Ok((old.verifier().vkey(), new.verifier().vkey()))
}

/// `vouchsafe keys rotate token`: a new token key (the next id, fresh material) first in
/// `token.key`, every older one kept; written whole and renamed over. Returns (old id, new id).
pub fn rotate_token(dir: &Path) -> anyhow::Result<(u32, u32)> {
    let keys = load_engine_keys(dir)?;
    let rotated = keys.token_keys().rotated().context("token.key is full")?;
    let staged = dir.join(format!("{TOKEN_KEY}.new"));
    write_private(&staged, rotated.to_text().as_bytes())?;
    std::fs::rename(&staged, dir.join(TOKEN_KEY)).context("cannot replace token.key")?;
    Ok((keys.token_key_id(), rotated.current_id()))
}

/// Creates `dir` if needed, private (0700).
fn private_dir(dir: &Path) -> anyhow::Result<&Path> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(dir)
}

/// Whether `dir` holds no keys yet (missing or empty).
pub fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()).unwrap_or(true)
}

pub fn load_engine_private(dir: &Path) -> anyhow::Result<RsaPrivate> {
    let path = dir.join(ENGINE_PEM);
    warn_if_loose(dir);
    warn_if_loose(&path);
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}; run `vouchsafe keys init --out {}`", path.display(), dir.display()))?,
    );
    RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", path.display()))
}

/// The current key of an `engine.pub.pem` file (`--engine-key`): what media keys are
/// wrapped for and certificates checked with.
pub fn engine_public_from_file(path: &Path) -> anyhow::Result<crypto::RsaPublic> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(engine::keyset::KeySet::from_pem_bundle(&pem).with_context(|| format!("{} is not an engine public key set", path.display()))?.current().clone())
}

/// The engine's current public key (the first of `engine.pub.pem`'s set).
pub fn load_engine_public(dir: &Path) -> anyhow::Result<crypto::RsaPublic> {
    Ok(load_engine_keyset(dir)?.current().clone())
}

/// The engine's key set, `engine.pub.pem`: every key it signs or signed with, newest first
/// (one block before any rotation). What an auditor needs besides the royalty master key.
pub fn load_engine_keyset(dir: &Path) -> anyhow::Result<engine::keyset::KeySet> {
    let path = dir.join(ENGINE_PUB_PEM);
    let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    engine::keyset::KeySet::from_pem_bundle(&pem).with_context(|| format!("{} is not a set of RSA public keys", path.display()))
}

/// The engine's keys: `engine.pem`, the keys rotated out (`retired/<key id>.pem`, one for
/// each older key of `engine.pub.pem`), `token.key` when a rotation wrote it, and the
/// checkpoint key.
pub fn load_engine_keys(dir: &Path) -> anyhow::Result<engine::app::EngineKeys> {
    finish_interrupted_rotation(dir)?;
    let private = load_engine_private(dir)?;
    let set = load_engine_keyset(dir)?;
    if set.current() != &private.public() {
        bail!("the first key of engine.pub.pem is not engine.pem's; a rotation writes both (`vouchsafe keys rotate engine`)");
    }
    let mut retired = Vec::new();
    for public in set.iter().skip(1) {
        let path = dir.join(RETIRED_DIR).join(format!("{}.pem", public.key_id()));
        warn_if_loose(&path);
        let pem =
            zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| format!("cannot read {}, a key engine.pub.pem names", path.display()))?);
        let old = RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", path.display()))?;
        if &old.public() != public {
            bail!("{} is not the key its name says", path.display());
        }
        retired.push(old);
    }
    let token_path = dir.join(TOKEN_KEY);
    let token_keys = if token_path.exists() {
        warn_if_loose(&token_path);
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(&token_path).with_context(|| format!("cannot read {}", token_path.display()))?);
        engine::token_keys::TokenKeys::parse(&text).with_context(|| format!("{} is not a token key file", token_path.display()))?
    } else {
        engine::token_keys::TokenKeys::first(engine::app::EngineKeys::token_key_material_of(&private)?)
    };
    let mut keys = engine::app::EngineKeys::with_retired(private, retired, token_keys)?;
    keys.checkpoint = load_checkpoint_key(dir)?;
    Ok(keys)
}

/// A rotation stopped between its two renames (`engine.pub.pem` names the new key, which is
/// still `engine.pem.new`; `checkpoint.vkey` the new checkpoint key, still
/// `checkpoint.key.new`) is finished.
fn finish_interrupted_rotation(dir: &Path) -> anyhow::Result<()> {
    let staged_checkpoint = dir.join(format!("{CHECKPOINT_KEY}.new"));
    if staged_checkpoint.exists() {
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(&staged_checkpoint).with_context(|| format!("cannot read {}", staged_checkpoint.display()))?);
        let staged = NoteSigner::from_private_line(&text).map_err(|_| anyhow::anyhow!("{} is not a note private key", staged_checkpoint.display()))?;
        if load_checkpoint_vkey_file(&dir.join(CHECKPOINT_VKEY))?.vkey() == staged.verifier().vkey() {
            std::fs::rename(&staged_checkpoint, dir.join(CHECKPOINT_KEY)).context("cannot finish the rotation: replacing checkpoint.key")?;
            tracing::warn!(dir = %dir.display(), "finished a checkpoint key rotation that stopped before checkpoint.key was replaced");
        }
    }
    let staged = dir.join(format!("{ENGINE_PEM}.new"));
    if !staged.exists() {
        return Ok(());
    }
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&staged).with_context(|| format!("cannot read {}", staged.display()))?);
    let new = RsaPrivate::from_pkcs8_pem(&pem).with_context(|| format!("{} is not a PKCS#8 RSA private key", staged.display()))?;
    if load_engine_keyset(dir)?.current() == &new.public() {
        std::fs::rename(&staged, dir.join(ENGINE_PEM)).context("cannot finish the rotation: replacing engine.pem")?;
        tracing::warn!(dir = %dir.display(), "finished a key rotation that stopped before engine.pem was replaced");
    }
    Ok(())
}

/// `vouchsafe keys rotate engine`: a new engine key in `dir`, the current one kept under
/// `retired/`, the token key material written down (`token.key`) if it was not yet, and
/// `engine.pub.pem` the set with the new key first. Each file is complete before the next
/// is written and `engine.pem` is replaced last (renamed over), so a crash leaves the old
/// key current. Returns (old key id, new key id).
pub fn rotate_engine(dir: &Path) -> anyhow::Result<(String, String)> {
    let keys = load_engine_keys(dir)?;
    let old_id = keys.key_id();
    let retired = private_dir(&dir.join(RETIRED_DIR))?.to_path_buf();
    write_private(&retired.join(format!("{old_id}.pem")), keys.private.to_pkcs8_pem()?.as_bytes())?;
    if !dir.join(TOKEN_KEY).exists() {
        write_secret(&dir.join(TOKEN_KEY), keys.token_keys().to_text().as_bytes())?;
    }
    let new = RsaPrivate::generate(ENGINE_RSA_BITS)?;
    let new_id = new.public().key_id();
    let set = keys.set.rotated(new.public());
    let staged_public = dir.join(format!("{ENGINE_PUB_PEM}.new"));
    std::fs::write(&staged_public, set.to_pem_bundle()?).with_context(|| format!("cannot write {}", staged_public.display()))?;
    let staged_private = dir.join(format!("{ENGINE_PEM}.new"));
    write_private(&staged_private, new.to_pkcs8_pem()?.as_bytes())?;
    std::fs::rename(&staged_public, dir.join(ENGINE_PUB_PEM)).context("cannot replace engine.pub.pem")?;
    std::fs::rename(&staged_private, dir.join(ENGINE_PEM)).context("cannot replace engine.pem")?;
    Ok((old_id, new_id))
}

pub fn load_royalty_master(dir: &Path) -> anyhow::Result<SecretKey> {
    read_hex_secret(&dir.join(ROYALTY_MASTER))
}

/// A 32-byte secret written as 64 hex digits (`royalty-master.key`, `token.key`); the
/// error names the file, never its contents.
fn read_hex_secret(path: &Path) -> anyhow::Result<SecretKey> {
    warn_if_loose(path);
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| anyhow::anyhow!("{} must hold 64 hex digits", path.display()))?;
    let key = SecretKey::from_bytes(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(key)
}

/// The royalty master key when `dir` holds one. An engine's key directory need not: the
/// key belongs to the auditor, and an engine without it chains on from its projection
/// store's chain key (forward security, ARCHITECTURE.md).
pub fn load_royalty_master_if_present(dir: &Path) -> anyhow::Result<Option<SecretKey>> {
    if !dir.join(ROYALTY_MASTER).exists() {
        return Ok(None);
    }
    load_royalty_master(dir).map(Some)
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
    finish_interrupted_rotation(dir)?;
    let private = load_engine_private(dir)?;
    if load_engine_keyset(dir)?.current() != &private.public() {
        bail!("engine.pub.pem does not match engine.pem");
    }
    load_royalty_master_if_present(dir)?;
    load_operator_id(dir)?;
    if let Some(signer) = load_checkpoint_key(dir)?
        && load_checkpoint_vkey(dir)?.is_some_and(|verifier| verifier.vkey() != signer.verifier().vkey())
    {
        bail!("checkpoint.vkey does not match checkpoint.key");
    }
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
            for name in [ENGINE_PEM, ROYALTY_MASTER, OPERATOR_CRED, CHECKPOINT_KEY] {
                let mode = std::fs::metadata(dir.path().join(name)).expect("file exists").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{name} must be private");
            }
        }
        let again = init(dir.path()).expect_err("second init must refuse");
        assert!(again.to_string().contains("never overwrites"));
        // The checkpoint key and its vkey: one key, named after the origin.
        let signer = load_checkpoint_key(dir.path()).expect("loads").expect("written");
        let verifier = load_checkpoint_vkey(dir.path()).expect("loads").expect("written");
        assert_eq!(signer.verifier(), verifier);
        assert!(signer.name().starts_with("vouchsafe.local/royalty/"));
        assert_eq!(std::fs::read_to_string(dir.path().join(CHECKPOINT_VKEY)).expect("vkey").lines().count(), 1);
        // Control: a vkey of another key is refused by check_dir.
        let other = NoteSigner::generate(signer.name()).expect("key");
        std::fs::write(dir.path().join(CHECKPOINT_VKEY), other.verifier().vkey()).expect("write");
        assert!(check_dir(dir.path()).is_err(), "a mismatched vkey");
        let named = tempfile::tempdir().expect("temp dir");
        init_with_origin(named.path(), Some("example.com/royalty")).expect("init");
        assert_eq!(load_checkpoint_key(named.path()).expect("loads").expect("written").name(), "example.com/royalty");
        assert!(init_with_origin(tempfile::tempdir().expect("dir").path(), Some("bad origin")).is_err());
    }

    /// The key directory was created with default permissions (0755 under a usual umask):
    /// now it is 0700, so only the owner may list it. Control: the temp dir's parent is
    /// not (`loose_mode` sees what it should).
    #[cfg(unix)]
    #[test]
    fn the_key_directory_is_private_and_loose_files_are_seen() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let keys = root.path().join("keys");
        init(&keys).expect("keys init");
        assert_eq!(std::fs::metadata(&keys).expect("dir").permissions().mode() & 0o777, 0o700);
        assert_eq!(loose_mode(&keys), None);
        assert_eq!(loose_mode(root.path()), Some(0o755), "the control: a 0755 directory is loose");
        // A key file someone opened up is seen (and warned about at load).
        let pem = keys.join(ENGINE_PEM);
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(loose_mode(&pem), Some(0o644));
        load_engine_private(&keys).expect("a loose key still loads (with a warning)");
    }

    /// `merchant buy --out FILE` writes the sale (which holds the receipt) 0600, also over
    /// an existing world-readable file, which a shell redirect would have kept.
    #[cfg(unix)]
    #[test]
    fn private_files_are_written_0600_even_over_a_readable_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let sale = dir.path().join("sale.json");
        std::fs::write(&sale, "old").expect("write");
        std::fs::set_permissions(&sale, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(loose_mode(&sale), Some(0o644), "the control: a redirect's file is readable by others");
        write_private(&sale, b"{\"receipt\":\"..\"}").expect("write");
        assert_eq!(std::fs::metadata(&sale).expect("file").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&sale).expect("read"), "{\"receipt\":\"..\"}");
    }
}
