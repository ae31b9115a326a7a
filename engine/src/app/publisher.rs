//! Publisher accounts' use cases: the operator registers a publisher (its credential, terms
//! and signing keys, `domain::publisher`), and a publisher publishes its own media: the
//! container must be signed by one of its registered keys, and the media is sold under its
//! account's terms. A refusal stores and appends nothing.

use super::*;
use crate::domain::event::RoyaltyTerms;
use crate::domain::publisher::{Publisher, PublisherCommand, PublisherKey, PublisherStatus};

/// What `add_publisher_key` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherKeyAdded {
    pub key_id: String,
    /// False when the key was registered already (or the request was a retry).
    pub changed: bool,
    /// The publisher's keys after the command.
    pub keys: usize,
}

impl Market {
    /// Registers a publisher with a credential (shown once), its royalty terms and its
    /// signing keys (RSA-2048+ SubjectPublicKeyInfo DER, each recorded with its key id).
    pub async fn register_publisher(
        &self,
        operator: &str,
        request: &RequestId,
        name: &str,
        terms: RoyaltyTerms,
        public_keys_der: &[Vec<u8>],
    ) -> Result<Credential, AppError> {
        let keys = public_keys_der
            .iter()
            .map(|der| {
                let key = RsaPublic::from_der(der)
                    .map_err(|_| Rejection::InvalidArgument { field: "public_keys_der", reason: "each must be an RSA-2048+ SubjectPublicKeyInfo".into() })?;
                Ok(PublisherKey { key_id: key.key_id(), public_key_der: key.to_der()? })
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        let publisher = publisher_id_for(operator, request);
        let secret = SecretKey::random();
        let command = PublisherCommand::Register {
            publisher: publisher.clone(),
            name: name.to_string(),
            credential_hash: crypto::credential_hash(secret.expose()),
            terms,
            keys,
        };
        let handled = self.handler.handle::<Publisher>(&publisher.0, &actor(ActorKind::Operator, operator), request, &command).await?;
        if handled.repeated {
            // The secret was shown once; a retry cannot show it again.
            return Err(Rejection::AlreadyExists { kind: "publisher credential", id: publisher.0 }.into());
        }
        Ok(Credential { id: publisher.0, secret })
    }

    /// Registers another signing key for a publisher (`PublisherKeyAdded`): answers the
    /// key's id, whether it was new, and how many keys the publisher holds now.
    pub async fn add_publisher_key(
        &self,
        operator: &str,
        request: &RequestId,
        publisher: &PublisherId,
        public_key_der: &[u8],
    ) -> Result<PublisherKeyAdded, AppError> {
        crate::domain::validate::id("publisher_id", &publisher.0)?;
        let key = RsaPublic::from_der(public_key_der)
            .map_err(|_| Rejection::InvalidArgument { field: "public_key_der", reason: "must be an RSA-2048+ SubjectPublicKeyInfo".into() })?;
        let key = PublisherKey { key_id: key.key_id(), public_key_der: key.to_der()? };
        let key_id = key.key_id.clone();
        let handled = self
            .handler
            .handle::<Publisher>(&publisher.0, &actor(ActorKind::Operator, operator), request, &PublisherCommand::AddKey { key })
            .await
            .map_err(|error| naming(error, &publisher.0))?;
        Ok(PublisherKeyAdded { key_id, changed: !handled.appended.is_empty(), keys: handled.root.state.keys.len() })
    }

    /// PublishMedia by a publisher: the container must be signed (format 2 or 3) by a key
    /// registered for this publisher (`UnregisteredPublisherKey` otherwise), and the media
    /// is sold under the account's terms; `request_terms`, when given, must be those.
    /// Everything is checked before a byte is stored or an event appended.
    #[allow(clippy::too_many_arguments)] // the parts of one PublishMedia request
    pub async fn publish_as_publisher(
        &self,
        publisher: &PublisherId,
        request: &RequestId,
        mut input: PublishInput,
        request_terms: Option<RoyaltyTerms>,
        container: bytes::Bytes,
        preview_clip: bytes::Bytes,
        store: &MediaStore,
    ) -> Result<MediaId, AppError> {
        let account = self.handler.load::<Publisher>(&publisher.0).await?;
        if account.state.status != PublisherStatus::Active {
            return Err(Rejection::NotFound { kind: "publisher", id: publisher.0.clone() }.into());
        }
        if request_terms.is_some_and(|terms| terms != account.state.terms) {
            return Err(Rejection::InvalidArgument {
                field: "terms",
                reason: "a publisher's media is sold under its account's terms; leave terms out (or send exactly those)".into(),
            }
            .into());
        }
        input.terms = account.state.terms.clone();
        let media_id = media_id_for(&publisher.0, request);
        let claims = input.claims(preview_clip.clone());
        let checked_container = container.clone();
        let (container_format, signer) =
            tokio::task::spawn_blocking(move || check_container_signed(&checked_container, &media_id, &claims)).await.map_err(AppError::Task)??;
        let signer = signer.ok_or_else(|| Rejection::InvalidArgument {
            field: "container",
            reason: "a publisher's media must be a signed container (format 2 or 3), signed with one of its registered keys".into(),
        })?;
        if !account.state.key(&signer.key_id(), &signer.to_der()?) {
            return Err(Rejection::UnregisteredPublisherKey { key_id: signer.key_id() }.into());
        }
        drop(account);
        self.store_and_publish(&publisher.0, request, input, container, preview_clip, store, container_format).await
    }
}
