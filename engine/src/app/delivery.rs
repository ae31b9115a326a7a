//! The delivery node's use cases: redeeming a voucher (the keys re-wrapped for the
//! consumer the receipt proof names), recovering a lost copy, completing or failing a
//! delivery with the buyer's confirm proof, and ending a preview.

use super::*;

impl Market {
    async fn active_node(&self, node: &NodeId) -> Result<(), AppError> {
        match self.handler.load::<Node>(&node.0).await?.state.status {
            NodeStatus::Active | NodeStatus::Drained => Ok(()),
            NodeStatus::Removed => Err(Rejection::NodeUnavailable.into()),
            NodeStatus::Unknown => Err(Rejection::NotFound { kind: "node", id: node.0.clone() }.into()),
        }
    }

    /// Redeems a voucher for a consumer who proved possession of the receipt: checks the
    /// proof and the certificate, records the redemption, re-wraps each media key for the
    /// consumer's public key, and signs one transaction record per media (the delivered
    /// copy's stamp). The records are signed in batches (`BatchSigner`: one RSA private-key
    /// operation on the blocking pool per batch of concurrent redemptions), only once the
    /// redemption is recorded, so a refused request costs none.
    #[allow(clippy::too_many_arguments)]
    pub async fn redeem(
        &self,
        node: &NodeId,
        request: &RequestId,
        voucher_id: &VoucherId,
        consumer: &ConsumerId,
        cert_serial: &CertSerial,
        challenge: &[u8],
        proof: &[u8],
    ) -> Result<RedeemAnswer, AppError> {
        self.release(node, request, voucher_id, consumer, cert_serial, challenge, proof, false).await
    }

    /// A delivered purchase fetched again by the consumer its keys went to (a lost copy),
    /// checked as a redemption is, at most `delivery.recoveries_max` times: the keys
    /// re-wrapped for the certificate named, the records marked as that recovery, and no
    /// new usage.
    #[allow(clippy::too_many_arguments)]
    pub async fn recover(
        &self,
        node: &NodeId,
        request: &RequestId,
        voucher_id: &VoucherId,
        consumer: &ConsumerId,
        cert_serial: &CertSerial,
        challenge: &[u8],
        proof: &[u8],
    ) -> Result<RedeemAnswer, AppError> {
        self.release(node, request, voucher_id, consumer, cert_serial, challenge, proof, true).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn release(
        &self,
        node: &NodeId,
        request: &RequestId,
        voucher_id: &VoucherId,
        consumer: &ConsumerId,
        cert_serial: &CertSerial,
        challenge: &[u8],
        proof: &[u8],
        recover: bool,
    ) -> Result<RedeemAnswer, AppError> {
        self.active_node(node).await?;
        crate::domain::validate::id("consumer_id", &consumer.0)?;
        crate::domain::validate::id("cert_serial", &cert_serial.0)?;
        if challenge.len() < 16 || challenge.len() > 64 {
            return Err(Rejection::InvalidArgument { field: "challenge", reason: "must be 16..=64 bytes".into() }.into());
        }
        let root = self.voucher_of(voucher_id).await?;
        let now = self.now();
        let consumer_root = self.handler.load::<Consumer>(&consumer.0).await?;
        let cert = consumer_root.state.cert_check(cert_serial, now);
        // The certificate's key as the engine recorded it: the proof must name exactly this
        // consumer, certificate and key, or another passport could take the keys.
        let public_key_der = consumer_root.state.certs.get(cert_serial).map(|cert| cert.public_key_der.clone()).unwrap_or_default();
        let subject = crypto::ProofConsumer::new(&consumer.0, &cert_serial.0, &public_key_der);
        // No receipt before authorization (its token key id is recorded with it): the
        // domain names the refusal (an unknown voucher, one not paid for).
        let proof_check = if root.state.receipt_generation > 0 {
            let token_key = self.keys().token_key(root.state.receipt_key_id)?;
            let receipt = crypto::derive_token(&token_key, TokenPurpose::Receipt, &voucher_id.0, root.state.receipt_generation);
            if crypto::verify_receipt_proof(&receipt, &voucher_id.0, &node.0, challenge, &subject, proof) { ProofCheck::Valid } else { ProofCheck::Invalid }
        } else {
            ProofCheck::Invalid
        };
        let config = self.config().await?;
        let retries_max = retries_max_of(&config);
        let recoveries_max = recoveries_max_of(&config);
        // The handler builds the next state in place when it holds the only reference.
        drop((root, consumer_root));
        let redeem = Redeem {
            node: node.clone(),
            consumer: consumer.clone(),
            cert_serial: cert_serial.clone(),
            cert,
            proof: proof_check,
            challenge_hash: crypto::hash(challenge),
            consumer_key_hash: subject.key_hash,
            retries_max,
        };
        let command = if recover { VoucherCommand::Recover { redeem, recoveries_max } } else { VoucherCommand::Redeem(redeem) };
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &actor(ActorKind::Node, &node.0), request, &command).await?;
        // A repeated request is answered without deciding again, so what the first decided
        // is checked here: the answer goes only to the consumer and certificate the first
        // Redeem recorded, with a certificate still valid and a proof that verifies.
        if handled.repeated {
            // A recovery is answered again only to the consumer the keys went to.
            let same = if recover {
                handled.root.state.released_to.as_ref().is_some_and(|(released, _)| released == consumer)
            } else {
                handled.root.state.consumer.as_ref() == Some(&(consumer.clone(), cert_serial.clone()))
            };
            if !same {
                return Err(Rejection::AlreadyRedeemed.into());
            }
            cert.require("certificate", cert_serial)?;
            if proof_check != ProofCheck::Valid {
                return Err(Rejection::BadProof.into());
            }
        }
        // Keys are wrapped only now, after the decision: a refused request costs no RSA and
        // gets no key.
        let state = &handled.root.state;
        let consumer_key = self.consumer_key(&public_key_der)?;
        let mut keys = Vec::new();
        let mut records = Vec::new();
        // One key for every record of this answer: the one its signer signs with.
        let signing = self.signing();
        for item in &state.items {
            let media = self.media(&item.media_id).await?;
            let rendition = media.published.as_ref().and_then(|published| published.renditions.iter().find(|r| r.name == state.rendition));
            let content_hash =
                rendition.ok_or_else(|| Rejection::NotFound { kind: "rendition", id: format!("{}/{}", item.media_id.0, state.rendition) })?.content_hash;
            keys.push((item.media_id.clone(), self.wrap_purchase(&media, &item.media_id, &state.rendition, &consumer_key).await?));
            records.push(TransactionRecord {
                voucher_id: voucher_id.clone(),
                media_id: item.media_id.clone(),
                rendition: state.rendition.clone(),
                node_id: node.clone(),
                delivered_at: now,
                engine_key_id: signing.keys.key_id(),
                consumer_id: consumer.clone(),
                cert_serial: cert_serial.clone(),
                content_hash,
                recovery: if recover { state.recoveries } else { 0 },
            });
        }
        let signatures =
            futures::future::try_join_all(records.iter().map(|record| signing.transactions.sign(record.message()))).await.map_err(AppError::Sign)?;
        let transactions = records.into_iter().zip(signatures).map(|(record, signature)| SignedTransaction { record, signature }).collect();
        Ok(RedeemAnswer { voucher_id: voucher_id.clone(), keys, transactions })
    }

    /// The node reports a delivery the player confirmed, with the player's confirm proof
    /// over the content hash (`crypto::confirm_proof`).
    #[allow(clippy::too_many_arguments)] // the fields of one CompleteDeliveryRequest
    pub async fn complete_delivery(
        &self,
        node: &NodeId,
        request: &RequestId,
        voucher_id: &VoucherId,
        media_id: &MediaId,
        content_hash: [u8; 32],
        size_bytes: u64,
        confirm_proof: &[u8],
    ) -> Result<bool, AppError> {
        let root = self.voucher_of(voucher_id).await?;
        let proof = self.confirm_check(&root.state, voucher_id, node, media_id, &content_hash, confirm_proof).await?;
        drop(root);
        let command = VoucherCommand::CompleteDelivery(CompleteDelivery { node: node.clone(), media_id: media_id.clone(), content_hash, size_bytes, proof });
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &actor(ActorKind::Node, &node.0), request, &command).await?;
        Ok(handled.root.state.status == voucher::VoucherStatus::Delivered)
    }

    /// The node reports a delivery the player found broken (`received_hash` is not the
    /// container's), with the player's confirm proof over what it received.
    #[allow(clippy::too_many_arguments)] // the fields of one FailDeliveryRequest
    pub async fn fail_delivery(
        &self,
        node: &NodeId,
        request: &RequestId,
        voucher_id: &VoucherId,
        reason: &str,
        media_id: &MediaId,
        received_hash: &[u8],
        confirm_proof: &[u8],
    ) -> Result<(), AppError> {
        let root = self.voucher_of(voucher_id).await?;
        let proof = self.confirm_check(&root.state, voucher_id, node, media_id, received_hash, confirm_proof).await?;
        drop(root);
        let command = VoucherCommand::FailDelivery { node: node.clone(), reason: reason.to_string(), proof };
        self.handler.handle::<Voucher>(&voucher_id.0, &actor(ActorKind::Node, &node.0), request, &command).await?;
        Ok(())
    }

    /// Whether `proof` is the confirm proof of the consumer and certificate the voucher's
    /// keys were last wrapped for, over this node, media and hash (public data and the receipt the engine
    /// derives; no RSA). No release yet: no proof can be valid.
    async fn confirm_check(
        &self,
        state: &Voucher,
        voucher_id: &VoucherId,
        node: &NodeId,
        media_id: &MediaId,
        hash: &[u8],
        proof: &[u8],
    ) -> Result<ProofCheck, AppError> {
        // The redemption under way names the certificate the keys were wrapped for (the first
        // one, or a consumer's newer certificate after a reissue).
        let Some((consumer, cert_serial)) = state.consumer.clone().or_else(|| state.released_to.clone()) else { return Ok(ProofCheck::Invalid) };
        if state.receipt_generation == 0 {
            return Ok(ProofCheck::Invalid);
        }
        let consumer_root = self.handler.load::<Consumer>(&consumer.0).await?;
        let public_key_der = consumer_root.state.certs.get(&cert_serial).map(|cert| cert.public_key_der.as_slice()).unwrap_or_default();
        let subject = crypto::ProofConsumer::new(&consumer.0, &cert_serial.0, public_key_der);
        let receipt = crypto::derive_token(&self.keys().token_key(state.receipt_key_id)?, TokenPurpose::Receipt, &voucher_id.0, state.receipt_generation);
        let valid = crypto::verify_confirm_proof(&receipt, &voucher_id.0, &node.0, &media_id.0, hash, &subject, proof);
        Ok(if valid { ProofCheck::Valid } else { ProofCheck::Invalid })
    }

    pub async fn end_preview(&self, node: &NodeId, request: &RequestId, preview: &PreviewId, played_ms: u64) -> Result<(), AppError> {
        crate::domain::validate::id("preview_id", &preview.0)?;
        let command = PreviewCommand::End { node: node.clone(), played_ms };
        self.handler.handle::<Preview>(&preview.0, &actor(ActorKind::Node, &node.0), request, &command).await?;
        Ok(())
    }
}
