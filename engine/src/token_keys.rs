//! The token keys by id (issue 28): receipts, and the nodes' access keys that access tokens
//! are made with, derive from the token key their id names. Each id has key material of
//! its own (`token.key`, one `<id> <64 hex digits>` line each, newest first), so a rotation
//! (`vouchsafe keys rotate token`) draws a fresh secret that the older ids cannot reveal,
//! while every id a voucher recorded keeps deriving what it derived. A `token.key` of one
//! bare hex line (written by an engine key rotation before this) is id 1's material.
//! Not here: the files (`gateways::common::keys`), the recorded rotation (`domain::config`).

use crate::crypto::{self, SecretKey};
use zeroize::Zeroize;

pub use crate::domain::config::FIRST_TOKEN_KEY_ID;
/// The most token keys one engine holds; a rotation past it is refused (revoke by
/// starting a new key directory, not by growing this one without end).
pub const TOKEN_KEYS_MAX: usize = 64;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenKeysError {
    #[error("line {line} is not `<key id> <64 hex digits>`")]
    BadLine { line: usize },
    #[error("the key ids must be distinct, newest (highest) first")]
    Order,
    #[error("no token key")]
    Empty,
    #[error("more than {TOKEN_KEYS_MAX} token keys")]
    TooMany,
}

/// The token key material by id, newest first; never empty.
#[derive(Clone)]
pub struct TokenKeys {
    materials: Vec<(u32, SecretKey)>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").field("ids", &self.ids()).finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// One key, id 1, from `material` (derived from `engine.pem` before any rotation).
    pub fn first(material: SecretKey) -> Self {
        Self { materials: vec![(FIRST_TOKEN_KEY_ID, material)] }
    }

    /// `token.key`'s text: one bare hex line (id 1), or `<id> <hex>` lines, newest first.
    /// Errors name the line, never its contents.
    pub fn parse(text: &str) -> Result<Self, TokenKeysError> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        if let [line] = lines.as_slice()
            && !line.contains(' ')
        {
            return Ok(Self::first(parse_material(line).ok_or(TokenKeysError::BadLine { line: 1 })?));
        }
        let mut materials = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            let bad = TokenKeysError::BadLine { line: index + 1 };
            let (id, hex_material) = line.split_once(' ').ok_or(bad.clone())?;
            let id: u32 = id.parse().ok().filter(|id| *id >= FIRST_TOKEN_KEY_ID).ok_or(bad.clone())?;
            materials.push((id, parse_material(hex_material.trim()).ok_or(bad)?));
        }
        if materials.is_empty() {
            return Err(TokenKeysError::Empty);
        }
        if materials.len() > TOKEN_KEYS_MAX {
            return Err(TokenKeysError::TooMany);
        }
        if materials.windows(2).any(|pair| pair[0].0 <= pair[1].0) {
            return Err(TokenKeysError::Order);
        }
        Ok(Self { materials })
    }

    /// The text of `token.key` (a secret: write it 0600, never log it).
    pub fn to_text(&self) -> zeroize::Zeroizing<String> {
        let mut text = zeroize::Zeroizing::new(String::new());
        for (id, material) in &self.materials {
            let mut hex_material = hex::encode(material.expose());
            text.push_str(&format!("{id} {hex_material}\n"));
            hex_material.zeroize();
        }
        text
    }

    /// The id new tokens use.
    pub fn current_id(&self) -> u32 {
        self.materials[0].0
    }

    /// Every id held, newest first.
    pub fn ids(&self) -> Vec<u32> {
        self.materials.iter().map(|(id, _)| *id).collect()
    }

    /// The token key of `id`, `None` when this set does not hold it.
    pub fn key(&self, id: u32) -> Option<SecretKey> {
        let (_, material) = self.materials.iter().find(|(held, _)| *held == id)?;
        let mut input = Vec::with_capacity(36);
        input.extend_from_slice(material.expose());
        input.extend_from_slice(&id.to_le_bytes());
        let key = crypto::derive_key("vouchsafe 2026 token key", &input);
        input.zeroize();
        Some(key)
    }

    /// This set with a new key first: the next id, fresh random material.
    pub fn rotated(&self) -> Result<Self, TokenKeysError> {
        if self.materials.len() >= TOKEN_KEYS_MAX {
            return Err(TokenKeysError::TooMany);
        }
        let mut materials = Vec::with_capacity(self.materials.len() + 1);
        materials.push((self.current_id() + 1, SecretKey::random()));
        materials.extend(self.materials.iter().cloned());
        Ok(Self { materials })
    }

    /// Whether this set holds every key of `older` with the same material (compared in
    /// constant time): then nothing `older` derived changes.
    pub fn keeps(&self, older: &TokenKeys) -> bool {
        older.materials.iter().all(|(id, material)| self.materials.iter().any(|(held, kept)| held == id && kept.ct_eq(material)))
    }
}

fn parse_material(text: &str) -> Option<SecretKey> {
    let mut bytes = [0u8; crypto::KEY_BYTES];
    let parsed = hex::decode_to_slice(text, &mut bytes).ok().map(|()| SecretKey::from_bytes(bytes));
    bytes.zeroize();
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_adds_a_fresh_key_and_keeps_every_older_one() {
        let first = TokenKeys::first(SecretKey::from_bytes([7; 32]));
        let rotated = first.rotated().expect("room");
        assert_eq!(rotated.ids(), vec![2, 1]);
        assert!(rotated.key(1).expect("kept").ct_eq(&first.key(1).expect("held")));
        assert!(!rotated.key(2).expect("new").ct_eq(&rotated.key(1).expect("old")));
        assert!(rotated.keeps(&first));
        // Control: the older set does not keep the newer one's key.
        assert!(!first.keeps(&rotated));
        // Control: the same ids with other material are not kept.
        assert!(!TokenKeys::first(SecretKey::from_bytes([8; 32])).keeps(&first));
        assert!(rotated.key(3).is_none());
    }

    #[test]
    fn the_file_text_round_trips_and_a_bare_line_is_id_1() {
        let rotated = TokenKeys::first(SecretKey::from_bytes([7; 32])).rotated().expect("room");
        let parsed = TokenKeys::parse(&rotated.to_text()).expect("parses");
        assert!(parsed.keeps(&rotated) && rotated.keeps(&parsed));
        let bare = TokenKeys::parse(&format!("{}\n", hex::encode([7u8; 32]))).expect("a bare line");
        assert_eq!(bare.ids(), vec![1]);
        assert!(bare.key(1).expect("id 1").ct_eq(&rotated.key(1).expect("id 1")));
        assert_eq!(TokenKeys::parse("1 zz").map(|_| ()), Err(TokenKeysError::BadLine { line: 1 }));
        assert_eq!(TokenKeys::parse(&format!("1 {0}\n2 {0}", hex::encode([1u8; 32]))).map(|_| ()), Err(TokenKeysError::Order));
        assert_eq!(TokenKeys::parse("").map(|_| ()), Err(TokenKeysError::Empty));
        assert_eq!(TokenKeys::parse(&format!("0 {}", hex::encode([1u8; 32]))).map(|_| ()), Err(TokenKeysError::BadLine { line: 1 }));
    }
}
