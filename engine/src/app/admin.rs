//! The operator's administration of parties and the catalog: suspending and reinstating a
//! merchant, revoking an auditor, withdrawing a media or changing its price, revoking a
//! consumer's certificates. Each change is one decision of its aggregate and so one audited
//! event on the stream (a revocation of every certificate: one event per certificate);
//! a repeat is what the domain decides (a second suspension, reinstatement, withdrawal or
//! revocation changes nothing; a price change is recorded each time). Not here: who may call
//! these (the gateway's operator check) and registrations (`app.rs`).

use super::*;
use crate::domain::party::{Auditor, AuditorCommand, AuditorStatus};
use crate::domain::validate;

/// What an administrative command left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Administered<S> {
    /// The aggregate's state after the command (or its answer, for certificates).
    pub state: S,
    /// Whether the command appended an event: false for a change already in effect, and
    /// for a retry of an applied request.
    pub changed: bool,
}

/// A domain refusal names the aggregate it could not find by kind only (the state of an
/// unknown aggregate has no id): the answer names the id asked for.
pub(super) fn naming(error: HandleError, id: &str) -> AppError {
    match error {
        HandleError::Rejected(Rejection::NotFound { kind, id: found }) if found.is_empty() => Rejection::NotFound { kind, id: id.to_string() }.into(),
        other => other.into(),
    }
}

impl Market {
    async fn administer<A: Aggregate>(
        &self,
        field: &'static str,
        id: &str,
        operator: &str,
        request: &RequestId,
        command: &A::Command,
    ) -> Result<Administered<A>, AppError> {
        validate::id(field, id)?;
        let handled = self.handler.handle::<A>(id, &actor(ActorKind::Operator, operator), request, command).await.map_err(|error| naming(error, id))?;
        Ok(Administered { state: handled.root.state.clone(), changed: !handled.appended.is_empty() })
    }

    /// Suspends a merchant (`MerchantSuspended`): it still authenticates, and every use
    /// case that sells or spends refuses it.
    pub async fn suspend_merchant(
        &self,
        operator: &str,
        request: &RequestId,
        merchant: &MerchantId,
        reason: &str,
    ) -> Result<Administered<MerchantStatus>, AppError> {
        let command = MerchantCommand::Suspend { reason: reason.to_string() };
        let done = self.administer::<Merchant>("merchant_id", &merchant.0, operator, request, &command).await?;
        Ok(Administered { state: done.state.status, changed: done.changed })
    }

    /// Lifts a merchant's suspension (`MerchantReinstated`): it sells again.
    pub async fn reinstate_merchant(
        &self,
        operator: &str,
        request: &RequestId,
        merchant: &MerchantId,
        reason: &str,
    ) -> Result<Administered<MerchantStatus>, AppError> {
        let command = MerchantCommand::Reinstate { reason: reason.to_string() };
        let done = self.administer::<Merchant>("merchant_id", &merchant.0, operator, request, &command).await?;
        Ok(Administered { state: done.state.status, changed: done.changed })
    }

    /// Revokes an auditor's credential (`AuditorRevoked`): the front door refuses it from
    /// then on. Revoking a revoked auditor changes nothing.
    pub async fn revoke_auditor(
        &self,
        operator: &str,
        request: &RequestId,
        auditor: &AuditorId,
        reason: &str,
    ) -> Result<Administered<AuditorStatus>, AppError> {
        let command = AuditorCommand::Revoke { reason: reason.to_string() };
        let done = self.administer::<Auditor>("auditor_id", &auditor.0, operator, request, &command).await?;
        Ok(Administered { state: done.state.status, changed: done.changed })
    }

    /// Withdraws a media from sale (`MediaWithdrawn`): reservations of it are refused;
    /// what was sold before stays deliverable.
    pub async fn withdraw_media(&self, operator: &str, request: &RequestId, media: &MediaId, reason: &str) -> Result<Administered<Media>, AppError> {
        let command = MediaCommand::Withdraw { reason: reason.to_string() };
        self.administer::<Media>("media_id", &media.0, operator, request, &command).await
    }

    /// Changes a media's price (`PriceChanged`) for reservations from now on; a
    /// reservation records the price it was made at, so earlier ones keep theirs.
    pub async fn change_price(&self, operator: &str, request: &RequestId, media: &MediaId, price_minor: u64) -> Result<Administered<Media>, AppError> {
        let command = MediaCommand::ChangePrice { price_minor };
        self.administer::<Media>("media_id", &media.0, operator, request, &command).await
    }

    /// Revokes one certificate of a consumer (`CertRevoked`, the use case of
    /// `CatalogService.RevokeCert`), or with no serial every certificate it holds that is
    /// not revoked yet. Answers the serials this call revoked.
    pub async fn revoke_certs(
        &self,
        operator: &str,
        request: &RequestId,
        consumer: &ConsumerId,
        serial: Option<&CertSerial>,
        reason: &str,
    ) -> Result<Administered<Vec<CertSerial>>, AppError> {
        validate::id("consumer_id", &consumer.0)?;
        let command = match serial {
            Some(serial) => {
                validate::id("cert_serial", &serial.0)?;
                ConsumerCommand::Revoke { serial: serial.clone(), reason: reason.to_string() }
            }
            None => ConsumerCommand::RevokeAll { reason: reason.to_string() },
        };
        let before = self.handler.load::<Consumer>(&consumer.0).await?;
        let done = self.administer::<Consumer>("consumer_id", &consumer.0, operator, request, &command).await?;
        let revoked = done
            .state
            .certs
            .values()
            .filter(|cert| cert.revoked && before.state.certs.get(&cert.serial).is_some_and(|earlier| !earlier.revoked))
            .map(|cert| cert.serial.clone())
            .collect();
        Ok(Administered { state: revoked, changed: done.changed })
    }
}
