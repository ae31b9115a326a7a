//! Bytes as lowercase hex strings in serde's JSON, for `#[serde(with = ...)]`: the royalty
//! chain's entries (`royalty::ChainedEntry`) and the projection store's records use the
//! same three helpers, so that a hash or a ciphertext reads the same wherever it is stored.
//! What is not here: any other encoding of bytes (the wire format is `engine::wire`).

/// `Vec<u8>` ⇄ hex string of any even length.
pub(crate) mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// `[u8; 32]` ⇄ hex string of exactly 64 digits.
pub(crate) mod hex_array {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(serde::de::Error::custom)?;
        Ok(bytes)
    }
}

/// `Option<[u8; 32]>` ⇄ hex string of 64 digits, or `null`.
pub(crate) mod hex_option {
    pub fn serialize<S: serde::Serializer>(bytes: &Option<[u8; 32]>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<[u8; 32]>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(deserializer)?;
        text.map(|text| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text, &mut bytes).map_err(serde::de::Error::custom).map(|()| bytes)
        })
        .transpose()
    }
}
