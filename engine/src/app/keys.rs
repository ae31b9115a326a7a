//! Rotating the engine's RSA key without downtime (issue 28): the operator writes the new
//! key set into the key directory (`vouchsafe keys rotate engine`), the engine checks it
//! and records the rotation (`EngineKeyRotated`, on the config aggregate: audited), then
//! signs with the new key while keeping the old ones, by id, for what was signed and
//! wrapped under them. A retired key may be revoked once its grace period has passed
//! (`EngineKeyRevoked`); an audit then refuses anything it signs after that event. The
//! token keys (`TokenKeyRotated`) and the checkpoint key (`CheckpointKeyRotated`) rotate
//! the same way, one key at a time. Not here: the key files (`gateways::common::keys`), who may call this (the operator check).

use super::*;

impl Market {
    /// Signs with `keys` from now on, recording the rotation from the current key: the new
    /// set must keep every key the engine holds now (so nothing it signed or wrapped becomes
    /// unusable) and the same token key material (so issued tokens stay valid). A retry of
    /// an applied rotation changes nothing. Returns the new key id.
    pub async fn rotate_engine_key(&self, operator: &str, request: &RequestId, mut keys: EngineKeys) -> Result<String, AppError> {
        let current = self.keys();
        let new_id = keys.key_id();
        if new_id == current.key_id() {
            return Ok(new_id);
        }
        let kept = std::iter::once(&current.private).chain(current.retired()).all(|old| keys.private_for(&old.public().key_id()).is_some());
        if !kept {
            return Err(Rejection::InvalidArgument {
                field: "keys",
                reason: "the new key set does not keep every key the engine signs or has signed with; rotate from this engine's key directory".into(),
            }
            .into());
        }
        if !keys.token_keys().keeps(current.token_keys()) {
            return Err(Rejection::InvalidArgument {
                field: "keys",
                reason: "token.key does not hold this engine's token keys: issued tokens would change".into(),
            }
            .into());
        }
        let command = ConfigCommand::RotateEngineKey { key_id: new_id.clone(), public_key_der: keys.public.to_der()?, previous_key_id: current.key_id() };
        self.handler.handle::<Config>(CONFIG_AGGREGATE, &actor(ActorKind::Operator, operator), request, &command).await?;
        if keys.checkpoint.is_none() {
            keys.checkpoint = current.checkpoint.clone();
        }
        self.replace_keys(Arc::new(keys));
        tracing::info!(key_id = %new_id, previous = %current.key_id(), "the engine signs with its new key");
        Ok(new_id)
    }

    /// Makes receipts and access tokens under the newest token key of `keys` from now on,
    /// recording the rotation from the id in use. `keys` must be this engine's key set with
    /// a token key set that keeps every token key held now. A retry changes nothing; an
    /// engine taking up another engine's rotation appends nothing (the stream has it).
    /// Returns the token key id in use.
    pub async fn rotate_token_key(&self, operator: &str, request: &RequestId, mut keys: EngineKeys) -> Result<u32, AppError> {
        let current = self.keys();
        same_engine_key(&current, &keys)?;
        if !keys.token_keys().keeps(current.token_keys()) {
            return Err(Rejection::InvalidArgument {
                field: "keys",
                reason: "token.key does not hold every token key this engine holds: issued receipts and access tokens would stop working".into(),
            }
            .into());
        }
        let (new_id, previous_key_id) = (keys.token_key_id(), current.token_key_id());
        if new_id == previous_key_id {
            return Ok(new_id);
        }
        let command = ConfigCommand::RotateTokenKey { key_id: new_id, previous_key_id };
        self.handler.handle::<Config>(CONFIG_AGGREGATE, &actor(ActorKind::Operator, operator), request, &command).await?;
        keys.checkpoint = current.checkpoint.clone();
        self.replace_keys(Arc::new(keys));
        tracing::info!(token_key_id = new_id, previous = previous_key_id, "receipts and access tokens use the new token key");
        Ok(new_id)
    }

    /// Signs checkpoints with the checkpoint key of `keys` from now on (same origin),
    /// recording the rotation; the rest of `keys` must be what the engine holds now.
    /// Returns the vkey in use.
    pub async fn rotate_checkpoint_key(&self, operator: &str, request: &RequestId, keys: EngineKeys) -> Result<String, AppError> {
        let current = self.keys();
        same_engine_key(&current, &keys)?;
        if !(keys.token_keys().keeps(current.token_keys()) && current.token_keys().keeps(keys.token_keys())) {
            return Err(Rejection::InvalidArgument { field: "keys", reason: "token.key changed too: rotate one key at a time".into() }.into());
        }
        let Some(new) = keys.checkpoint.as_ref() else {
            return Err(Rejection::InvalidArgument { field: "keys", reason: "the key directory has no checkpoint.key".into() }.into());
        };
        let vkey = new.verifier().vkey();
        let previous_vkey = current.checkpoint.as_ref().map(|signer| signer.verifier().vkey()).unwrap_or_default();
        if vkey == previous_vkey {
            return Ok(vkey);
        }
        if let Some(old) = current.checkpoint.as_ref().filter(|old| old.name() != new.name()) {
            return Err(Rejection::InvalidArgument {
                field: "keys",
                reason: format!("the new checkpoint key is named {:?}, the log's origin is {:?}: a rotation keeps the origin", new.name(), old.name()),
            }
            .into());
        }
        let command = ConfigCommand::RotateCheckpointKey { vkey: vkey.clone(), previous_vkey: previous_vkey.clone() };
        self.handler.handle::<Config>(CONFIG_AGGREGATE, &actor(ActorKind::Operator, operator), request, &command).await?;
        self.replace_keys(Arc::new(keys));
        tracing::info!(%vkey, previous = %previous_vkey, "checkpoints are signed with the new checkpoint key");
        Ok(vkey)
    }

    /// At start: keys this engine's directory rotated that its stream has not recorded (the
    /// directory was rotated and the engine restarted before `keys rotate` reached it) are
    /// recorded now, before anything is signed or made with them, so each key's validity on
    /// the stream starts before its first use. `last_seal_key` names the key of the newest
    /// seal the projections hold (the keys in use on a stream that never recorded a
    /// rotation). A key the stream names that this directory does not hold is left to the
    /// key follower. Returns the names of the rotations recorded.
    pub async fn record_keys_at_start(&self, engine: &str, last_seal: Option<&KeysInUse>) -> Result<Vec<&'static str>, AppError> {
        let keys = self.keys();
        let config = self.config().await?;
        let by = actor(ActorKind::Operator, engine);
        let mut recorded = Vec::new();
        let engine_key_in_use = config.engine_key.as_deref().or(last_seal.map(|seal| seal.engine_key_id.as_str()));
        if let Some(previous) = engine_key_in_use.filter(|previous| *previous != keys.key_id() && keys.private_for(previous).is_some()) {
            let command =
                ConfigCommand::RotateEngineKey { key_id: keys.key_id(), public_key_der: keys.public.to_der()?, previous_key_id: previous.to_string() };
            let request = RequestId::new(format!("start-rotation-engine-{}", keys.key_id()));
            if !self.handler.handle::<Config>(CONFIG_AGGREGATE, &by, &request, &command).await?.appended.is_empty() {
                recorded.push("engine");
            }
        }
        let token_key_in_use = config.token_key_id.unwrap_or(crate::token_keys::FIRST_TOKEN_KEY_ID);
        if keys.token_key_id() > token_key_in_use && keys.token_keys().key(token_key_in_use).is_some() {
            let command = ConfigCommand::RotateTokenKey { key_id: keys.token_key_id(), previous_key_id: token_key_in_use };
            let request = RequestId::new(format!("start-rotation-token-{}", keys.token_key_id()));
            if !self.handler.handle::<Config>(CONFIG_AGGREGATE, &by, &request, &command).await?.appended.is_empty() {
                recorded.push("token");
            }
        }
        let checkpoint_in_use = config.checkpoint_vkey.as_deref().or(last_seal.and_then(|seal| seal.checkpoint_vkey.as_deref()));
        if let (Some(previous), Some(signer)) = (checkpoint_in_use, keys.checkpoint.as_ref()) {
            let vkey = signer.verifier().vkey();
            if vkey != previous && !config.retired_checkpoint_vkeys.contains(&vkey) {
                let command = ConfigCommand::RotateCheckpointKey { vkey: vkey.clone(), previous_vkey: previous.to_string() };
                let request = RequestId::new(format!("start-rotation-checkpoint-{}", vkey.split('+').nth(1).unwrap_or_default()));
                if !self.handler.handle::<Config>(CONFIG_AGGREGATE, &by, &request, &command).await?.appended.is_empty() {
                    recorded.push("checkpoint");
                }
            }
        }
        Ok(recorded)
    }

    /// Revokes a retired engine key whose grace period has passed.
    pub async fn revoke_engine_key(&self, operator: &str, request: &RequestId, key_id: &str) -> Result<bool, AppError> {
        // On a stream that never rotated, the domain does not know the current key by name.
        if key_id == self.keys().key_id() {
            return Err(Rejection::InvalidArgument { field: "key_id", reason: "the engine signs with this key now: rotate to a new key first".into() }.into());
        }
        let command = ConfigCommand::RevokeEngineKey { key_id: key_id.to_string() };
        let handled = self.handler.handle::<Config>(CONFIG_AGGREGATE, &actor(ActorKind::Operator, operator), request, &command).await?;
        Ok(!handled.appended.is_empty())
    }
}

/// A token or checkpoint rotation changes that key only: the engine key must be the one the
/// engine signs with now.
fn same_engine_key(current: &EngineKeys, loaded: &EngineKeys) -> Result<(), AppError> {
    if loaded.key_id() != current.key_id() {
        return Err(Rejection::InvalidArgument {
            field: "keys",
            reason: format!(
                "the key directory's engine key is {}, this engine signs with {}: take that rotation up first (`keys rotate engine --record-only`)",
                loaded.key_id(),
                current.key_id()
            ),
        }
        .into());
    }
    Ok(())
}

/// The keys the newest seal was signed with, as the projections hold it: its engine key id
/// and, when the key directory knows it, the vkey of its checkpoint's key.
#[derive(Clone, Debug, Default)]
pub struct KeysInUse {
    pub engine_key_id: String,
    pub checkpoint_vkey: Option<String>,
}
