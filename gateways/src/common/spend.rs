//! A spend authorization on its ways between the consumer, the merchant and the engine:
//! the file `player authorize-spend` writes and `merchant reserve|buy --spend-authorization`
//! reads (one JSON object, hex for bytes), and the gRPC message. Checking it is the
//! engine's (`engine::spend`, `engine::domain::account`); here only shapes are refused.

use anyhow::Context;
use engine::ids::{AccountId, CertSerial, MediaId, MerchantId, Millis};
use engine::spend::{NONCE_BYTES, SpendAuthorization};
use proto::v1 as pb;
use std::path::Path;

/// Most bytes a signature may have (RSA-4096 signs in 512).
pub const SIGNATURE_BYTES_MAX: usize = 1024;

/// The gRPC message of an authorization.
pub fn to_pb(authorization: &SpendAuthorization) -> pb::SpendAuthorization {
    pb::SpendAuthorization {
        account_id: authorization.account.0.clone(),
        merchant_id: authorization.merchant.0.clone(),
        amount_max: authorization.amount_max,
        media_ids: authorization.media.iter().map(|m| m.0.clone()).collect(),
        nonce: authorization.nonce.to_vec(),
        expires_at_ms: authorization.expires_at.0,
        cert_serial: authorization.cert_serial.0.clone(),
        signature: authorization.signature.clone(),
    }
}

/// Why a message is not an authorization: the field and the reason (ids are checked by
/// the engine, which refuses them as its own fields).
pub fn from_pb(message: &pb::SpendAuthorization) -> Result<SpendAuthorization, (&'static str, String)> {
    let nonce: [u8; NONCE_BYTES] = message.nonce.as_slice().try_into().map_err(|_| ("spend_authorization.nonce", format!("must be {NONCE_BYTES} bytes")))?;
    if message.signature.is_empty() || message.signature.len() > SIGNATURE_BYTES_MAX {
        return Err(("spend_authorization.signature", format!("must be 1..={SIGNATURE_BYTES_MAX} bytes")));
    }
    if message.media_ids.len() > engine::domain::voucher::ITEMS_MAX {
        return Err(("spend_authorization.media_ids", format!("at most {}", engine::domain::voucher::ITEMS_MAX)));
    }
    if let Some(bad) = message.media_ids.iter().find(|m| !engine::ids::is_valid_token(m)) {
        return Err(("spend_authorization.media_ids", format!("{:?} is not a media id", bad.chars().take(64).collect::<String>())));
    }
    Ok(SpendAuthorization {
        account: AccountId(message.account_id.clone()),
        merchant: MerchantId(message.merchant_id.clone()),
        amount_max: message.amount_max,
        media: message.media_ids.iter().cloned().map(MediaId).collect(),
        nonce,
        expires_at: Millis(message.expires_at_ms),
        cert_serial: CertSerial(message.cert_serial.clone()),
        signature: message.signature.clone(),
    })
}

/// The file's JSON.
pub fn to_json(authorization: &SpendAuthorization) -> serde_json::Value {
    serde_json::json!({
        "account_id": authorization.account.0,
        "merchant_id": authorization.merchant.0,
        "amount_max": authorization.amount_max,
        "media_ids": authorization.media.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        "nonce": hex::encode(authorization.nonce),
        "expires_at_ms": authorization.expires_at.0,
        "cert_serial": authorization.cert_serial.0,
        "signature": hex::encode(&authorization.signature),
    })
}

/// Reads the file `player authorize-spend` wrote, as the gRPC message.
pub fn load(path: &Path) -> anyhow::Result<pb::SpendAuthorization> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let last = text.lines().rev().find(|line| !line.trim().is_empty()).with_context(|| format!("{} is empty", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(last).with_context(|| format!("{} is not the JSON `player authorize-spend` writes", path.display()))?;
    let text_field = |name: &str| value[name].as_str().map(str::to_string).with_context(|| format!("{} has no {name:?}", path.display()));
    let hex_field = |name: &str| hex::decode(text_field(name)?).with_context(|| format!("{name} in {} is not hex", path.display()));
    Ok(pb::SpendAuthorization {
        account_id: text_field("account_id")?,
        merchant_id: text_field("merchant_id")?,
        amount_max: value["amount_max"].as_u64().with_context(|| format!("{} has no amount_max", path.display()))?,
        media_ids: value["media_ids"]
            .as_array()
            .with_context(|| format!("{} has no media_ids", path.display()))?
            .iter()
            .map(|m| m.as_str().map(str::to_string).with_context(|| format!("a media id in {} is not text", path.display())))
            .collect::<anyhow::Result<_>>()?,
        nonce: hex_field("nonce")?,
        expires_at_ms: value["expires_at_ms"].as_i64().with_context(|| format!("{} has no expires_at_ms", path.display()))?,
        cert_serial: text_field("cert_serial")?,
        signature: hex_field("signature")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::crypto::test_keys::fixed_rsa;
    use engine::ids::ConsumerId;

    fn signed() -> SpendAuthorization {
        let media = vec![MediaId::new("song")];
        SpendAuthorization::sign(&fixed_rsa(), &ConsumerId::new("alice"), &CertSerial::new("c1"), &MerchantId::new("m1"), 500, media, Millis(9)).expect("sign")
    }

    #[test]
    fn the_file_and_the_message_carry_every_field() {
        let authorization = signed();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spend.json");
        std::fs::write(&path, format!("{}\n", to_json(&authorization))).expect("write");
        let message = load(&path).expect("load");
        assert_eq!(message, to_pb(&authorization));
        assert_eq!(from_pb(&message).expect("an authorization"), authorization);
    }

    #[test]
    fn malformed_shapes_name_their_field() {
        let good = to_pb(&signed());
        let cases: [(pb::SpendAuthorization, &str); 4] = [
            (pb::SpendAuthorization { nonce: vec![0; 15], ..good.clone() }, "spend_authorization.nonce"),
            (pb::SpendAuthorization { signature: Vec::new(), ..good.clone() }, "spend_authorization.signature"),
            (pb::SpendAuthorization { signature: vec![0; SIGNATURE_BYTES_MAX + 1], ..good.clone() }, "spend_authorization.signature"),
            (pb::SpendAuthorization { media_ids: vec!["no spaces".into()], ..good.clone() }, "spend_authorization.media_ids"),
        ];
        for (message, field) in cases {
            assert_eq!(from_pb(&message).expect_err("malformed").0, field);
        }
        assert!(from_pb(&good).is_ok(), "control");
    }
}
