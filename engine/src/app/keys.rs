//! Rotating the engine's RSA key without downtime (issue 28): the operator writes the new
//! key set into the key directory (`vouchsafe keys rotate engine`), the engine checks it
//! and records the rotation (`EngineKeyRotated`, on the config aggregate: audited), then
//! signs with the new key while keeping the old ones, by id, for what was signed and
//! wrapped under them. A retired key may be revoked once its grace period has passed
//! (`EngineKeyRevoked`); an audit then refuses anything it signs after that event. Not
//! here: the key files (`gateways::common::keys`), who may call this (the operator check).

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
        if !keys.token_key_material().ct_eq(current.token_key_material()) {
            return Err(Rejection::InvalidArgument {
                field: "keys",
                reason: "token.key does not hold this engine's token key material: issued tokens would change".into(),
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
