//! The points use cases: credits by the operator or by a merchant selling points, the
//! consumer's signed balance read, and the check of a spend authorization against the
//! consumer's certificate (what the account aggregate then decides on).

use super::*;
use crate::domain::account::{Seller, SpendConsent};
use crate::spend::{self, SpendAuthorization};

impl Market {
    /// The operator's credit of a certified consumer's points account; answers what is available.
    pub async fn top_up(&self, operator: &str, request: &RequestId, account: &AccountId, amount: u64, reference: &str) -> Result<u64, AppError> {
        self.credit_points(&actor(ActorKind::Operator, operator), request, account, amount, reference, None).await
    }

    /// Points a merchant sold a consumer (the merchant took the payment, in `currency`):
    /// its clearing account owes them to the consumer's points account.
    pub async fn sell_points(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        account: &AccountId,
        amount: u64,
        currency: &str,
        reference: &str,
    ) -> Result<u64, AppError> {
        self.active_merchant(merchant).await?;
        let seller = Seller { merchant: merchant.clone(), currency: currency.to_string() };
        self.credit_points(&actor(ActorKind::Merchant, &merchant.0), request, account, amount, reference, Some(seller)).await
    }

    async fn credit_points(
        &self,
        by: &Actor,
        request: &RequestId,
        account: &AccountId,
        amount: u64,
        reference: &str,
        seller: Option<Seller>,
    ) -> Result<u64, AppError> {
        crate::domain::validate::id("request_id", &request.0)?;
        crate::domain::validate::id("account_id", &account.0)?;
        // Points belong to a consumer: an account no certificate names could never spend.
        if self.handler.load::<Consumer>(&account.0).await?.state.id.is_none() {
            return Err(Rejection::NotFound { kind: "consumer", id: account.0.clone() }.into());
        }
        if !reference.is_empty() {
            crate::domain::validate::text("reference", reference, 200)?;
        }
        let reason = if reference.is_empty() { "top-up".to_string() } else { format!("top-up {reference}") };
        let command = AccountCommand::Credit { account: account.clone(), amount, reason, seller };
        let handled = self.handler.handle::<Account>(&account.0, by, request, &command).await?;
        Ok(handled.root.state.available())
    }

    /// A consumer's own points, read with a request signed by their passport within
    /// `spend::POINTS_REQUEST_SKEW_MS` of the engine's clock. An unknown consumer or
    /// certificate and a bad signature get the same refusal.
    pub async fn points_of_consumer(&self, consumer: &ConsumerId, cert_serial: &CertSerial, issued_at: Millis, signature: &[u8]) -> Result<Account, AppError> {
        crate::domain::validate::id("consumer_id", &consumer.0)?;
        crate::domain::validate::id("cert_serial", &cert_serial.0)?;
        let now = self.now();
        if now.0.abs_diff(issued_at.0) > spend::POINTS_REQUEST_SKEW_MS {
            return Err(Rejection::UnverifiedRequest { reason: "the request's issued_at_ms is more than 5 minutes from the engine's clock" }.into());
        }
        let consumer_root = self.handler.load::<Consumer>(&consumer.0).await?;
        let verified = consumer_root.state.cert_check(cert_serial, now) == CertCheck::Valid
            && consumer_root
                .state
                .certs
                .get(cert_serial)
                .is_some_and(|cert| spend::verify_points_request(&cert.public_key_der, consumer, cert_serial, issued_at, signature));
        if !verified {
            return Err(Rejection::UnverifiedRequest { reason: "the request is not signed by a valid certificate of this consumer" }.into());
        }
        Ok(self.handler.load::<Account>(&consumer.0).await?.state.clone())
    }

    /// A spend authorization checked against the consumer's certificate (public-key work);
    /// the account aggregate decides the rest.
    pub(super) async fn spend_consent(&self, authorization: &SpendAuthorization) -> Result<SpendConsent, AppError> {
        crate::domain::validate::id("spend_authorization.account_id", &authorization.account.0)?;
        crate::domain::validate::id("spend_authorization.cert_serial", &authorization.cert_serial.0)?;
        let consumer_root = self.handler.load::<Consumer>(&authorization.account.0).await?;
        let cert = consumer_root.state.cert_check(&authorization.cert_serial, self.now());
        let public_key_der = consumer_root.state.certs.get(&authorization.cert_serial).map(|cert| cert.public_key_der.as_slice()).unwrap_or_default();
        let consent = authorization.consent(cert, public_key_der);
        Ok(consent)
    }
}
