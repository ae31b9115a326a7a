//! The engine's key set: every RSA public key the engine signs or has signed with, found by
//! key id, newest first (issue 28: rotation). `engine.pub.pem` holds it as PEM blocks, one
//! per key, so a file written before rotation (one block) is a set of one. A signature
//! names its key id (seals, transaction records, certificates, published media), and a
//! verifier looks that key up here: what was signed before a rotation still verifies after
//! it. Which keys are revoked, and since when, is on the stream (`EngineKeyRevoked`), not
//! here. Not here: the private keys (`app::EngineKeys`), the primitives (`crypto`).

use crate::crypto::{CryptoError, RsaPublic};

const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const END: &str = "-----END PUBLIC KEY-----";
/// Keys a set holds at most (a key file is read whole; rotations are rare).
pub const KEYS_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySet {
    /// Newest first; never empty.
    keys: Vec<RsaPublic>,
}

impl KeySet {
    /// A set of one key.
    pub fn single(key: RsaPublic) -> Self {
        Self { keys: vec![key] }
    }

    /// The keys of PEM public key blocks, in the file's order (newest first).
    pub fn from_pem_bundle(text: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let end = rest[start..].find(END).ok_or_else(|| CryptoError::BadKey("a PEM block has no end line".into()))? + start + END.len();
            if keys.len() == KEYS_MAX {
                return Err(CryptoError::BadKey(format!("more than {KEYS_MAX} keys in the set")));
            }
            keys.push(RsaPublic::from_pem(&rest[start..end])?);
            rest = &rest[end..];
        }
        if keys.is_empty() {
            return Err(CryptoError::BadKey("no PEM public key block".into()));
        }
        Ok(Self { keys })
    }

    /// The set as PEM blocks, newest first.
    pub fn to_pem_bundle(&self) -> Result<String, CryptoError> {
        let mut text = String::new();
        for key in &self.keys {
            text.push_str(key.to_pem()?.trim_end());
            text.push('\n');
        }
        Ok(text)
    }

    /// The key new signatures use.
    pub fn current(&self) -> &RsaPublic {
        &self.keys[0]
    }

    pub fn get(&self, key_id: &str) -> Option<&RsaPublic> {
        self.keys.iter().find(|key| key.key_id() == key_id)
    }

    /// This set with `key` as the newest (current) one.
    pub fn rotated(&self, key: RsaPublic) -> Self {
        let id = key.key_id();
        let mut keys = vec![key];
        keys.extend(self.keys.iter().filter(|old| old.key_id() != id).cloned());
        Self { keys }
    }

    /// The set of `current` and the keys before it, newest first.
    pub fn of(current: RsaPublic, older: impl IntoIterator<Item = RsaPublic>) -> Self {
        let id = current.key_id();
        let mut keys = vec![current];
        keys.extend(older.into_iter().filter(|old| old.key_id() != id));
        Self { keys }
    }

    pub fn iter(&self) -> impl Iterator<Item = &RsaPublic> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a seal or a record is checked with: one key (which must be the one it names), or a
/// set, where the key it names is looked up.
pub trait EngineKeyLookup {
    fn key_for(&self, key_id: &str) -> Option<&RsaPublic>;
}

impl EngineKeyLookup for RsaPublic {
    fn key_for(&self, _key_id: &str) -> Option<&RsaPublic> {
        Some(self)
    }
}

impl EngineKeyLookup for KeySet {
    fn key_for(&self, key_id: &str) -> Option<&RsaPublic> {
        self.get(key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_keys;

    #[test]
    fn a_bundle_round_trips_newest_first_and_one_block_is_a_set_of_one() {
        let old = test_keys::fixed_rsa().public();
        let new = test_keys::fixed_rsa_2().public();
        let single = KeySet::from_pem_bundle(&old.to_pem().expect("pem")).expect("one block");
        assert_eq!((single.len(), single.current()), (1, &old));
        let set = single.rotated(new.clone());
        let read = KeySet::from_pem_bundle(&set.to_pem_bundle().expect("bundle")).expect("read back");
        assert_eq!(read, set);
        assert_eq!(read.current(), &new);
        assert_eq!(read.get(&old.key_id()), Some(&old), "the old key is found by its id");
        assert_eq!(read.get("no such id"), None);
        assert!(KeySet::from_pem_bundle("nothing here").is_err());
    }
}
