//! AdminService: statistics, audited configuration, draining and removing nodes,
//! suspending and reinstating merchants, revoking auditors and consumers' certificates,
//! withdrawing media and changing prices (operator only; each change an audited event);
//! the ledger, the parties and any points account (reads, `reads`).

use super::api::*;
use engine::domain::voucher::VoucherStatus;
use engine::ids::*;
use proto::v1 as pb;
use std::collections::HashMap;
use tonic::{Request, Response, Status};

pub(super) fn config_response(config: &engine::domain::config::Config) -> pb::ConfigResponse {
    pb::ConfigResponse {
        entries: engine::domain::config::KEYS
            .iter()
            .map(|&(key, min, max, default)| pb::ConfigEntry {
                key: key.to_string(),
                value: config.values.get(key).copied().unwrap_or(default),
                min,
                max,
                set: config.values.contains_key(key),
            })
            .collect(),
    }
}

pub(super) fn node_status_name(status: engine::domain::party::NodeStatus) -> &'static str {
    match status {
        engine::domain::party::NodeStatus::Unknown => "unknown",
        engine::domain::party::NodeStatus::Active => "active",
        engine::domain::party::NodeStatus::Drained => "drained",
        engine::domain::party::NodeStatus::Removed => "removed",
    }
}

fn merchant_status_name(status: engine::domain::party::MerchantStatus) -> &'static str {
    match status {
        engine::domain::party::MerchantStatus::Unknown => "unknown",
        engine::domain::party::MerchantStatus::Active => "active",
        engine::domain::party::MerchantStatus::Suspended => "suspended",
    }
}

fn auditor_status_name(status: engine::domain::party::AuditorStatus) -> &'static str {
    match status {
        engine::domain::party::AuditorStatus::Unknown => "unknown",
        engine::domain::party::AuditorStatus::Active => "active",
        engine::domain::party::AuditorStatus::Revoked => "revoked",
    }
}

fn media_answer(media: &MediaId, done: engine::app::Administered<engine::domain::catalog::Media>) -> pb::MediaAdminResponse {
    use engine::domain::catalog::MediaStatus;
    let status = match done.state.status {
        MediaStatus::Unknown => "unknown",
        MediaStatus::Published => "published",
        MediaStatus::Withdrawn => "withdrawn",
    };
    pb::MediaAdminResponse {
        media_id: media.0.clone(),
        status: status.into(),
        price_minor: done.state.price_minor,
        currency: done.state.published.as_ref().map(|published| published.currency.clone()).unwrap_or_default(),
        changed: done.changed,
    }
}

impl Api {
    /// The statistics the seed's administration module lists, and a modern operator expects.
    pub async fn stats(&self) -> Result<pb::StatsResponse, Status> {
        let head = self.state.log.last_seq().await.map_err(|error| crate::server::status::stream_unreadable("the engine", &error))?;
        let now = self.market().now().0;
        let certificates = self.state.live.read(|p| (p.reads.certificates.issued, p.reads.certificates.revoked, p.reads.certificates.expired_at(now)));
        let keys = self.market().keys();
        let config = self.market().config().await.map_err(fail)?;
        let (allocation, issued, pending, delivered, entries, seals, undelivered) = self.state.live.read(|p| {
            let allocation: Vec<(NodeId, projections::allocation::NodeSlots)> =
                p.allocation.nodes.iter().map(|(id, slots)| (id.clone(), slots.clone())).collect();
            let issued =
                [VoucherStatus::Issued, VoucherStatus::Redeeming, VoucherStatus::Delivered].into_iter().map(|status| p.vouchers.count(status)).sum::<usize>();
            (
                allocation,
                issued,
                p.vouchers.count(VoucherStatus::Pending),
                p.vouchers.count(VoucherStatus::Delivered),
                p.royalty.entries.len(),
                p.royalty.seals.len(),
                [VoucherStatus::Authorized, VoucherStatus::Issued, VoucherStatus::Redeeming].into_iter().map(|status| p.vouchers.count(status)).sum::<usize>(),
            )
        });
        let live: HashMap<NodeId, engine::placement::NodeLive> = self.state.nodes.snapshot().into_iter().collect();
        let mut nodes = Vec::with_capacity(allocation.len());
        for (node_id, slots) in allocation {
            let status = self.market().handler().load::<engine::domain::party::Node>(&node_id.0).await.map_err(|e| fail(e.into()))?.state.status;
            let announced = live.get(&node_id).cloned().unwrap_or_default();
            nodes.push(pb::NodeStatsView {
                healthy: self.state.nodes.healthy(&node_id),
                node_id: node_id.0,
                streams_max: slots.slots_max,
                streams_in_use: slots.in_use,
                cache_items: announced.beat.cache_items,
                cache_accesses: announced.beat.cache_accesses,
                cache_misses: announced.beat.cache_misses,
                endpoint: announced.endpoint,
                status: node_status_name(status).to_string(),
                region: slots.region,
            });
        }
        Ok(pb::StatsResponse {
            uptime_s: self.state.uptime().as_secs(),
            vouchers_issued: issued as u64,
            nodes,
            projection_lag: self.state.live.lag(head),
            events_per_s: self.state.rate.per_second(),
            stream_events: head.0,
            royalty_entries: entries as u64,
            seals: seals as u64,
            vouchers_pending: pending as u64,
            vouchers_delivered: delivered as u64,
            vouchers_undelivered: undelivered as u64,
            certificates_issued: certificates.0,
            certificates_revoked: certificates.1,
            certificates_expired: certificates.2,
            engine_key_id: keys.key_id(),
            engine_key_ids: keys.set.iter().map(|key| key.key_id()).collect(),
            engine_keys_revoked: config.retired_keys.values().filter(|retired| retired.revoked).count() as u64,
            token_key_id: keys.token_key_id(),
            token_key_ids: keys.token_keys().ids(),
            checkpoint_vkey: keys.checkpoint.as_ref().map(|signer| signer.verifier().vkey()).unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let result = async {
            Self::operator(&request)?;
            self.stats().await
        }
        .await;
        self.answer(result)
    }

    async fn get_config(&self, request: Request<pb::GetConfigRequest>) -> Result<Response<pb::ConfigResponse>, Status> {
        let result = async {
            Self::operator(&request)?;
            let config = self.market().config().await.map_err(fail)?;
            Ok(config_response(&config))
        }
        .await;
        self.answer(result)
    }

    async fn set_config(&self, request: Request<pb::SetConfigRequest>) -> Result<Response<pb::ConfigResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            self.market().set_config(&operator, &request_id, &message.key, &message.value).await.map_err(fail)?;
            self.state.apply_configuration().await;
            let config = self.market().config().await.map_err(fail)?;
            Ok(config_response(&config))
        }
        .await;
        self.answer(result)
    }

    async fn rotate_engine_key(&self, request: Request<pb::RotateEngineKeyRequest>) -> Result<Response<pb::EngineKeyResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let loaded = self.load_key_directory().await?;
            if loaded.key_id() != message.key_id {
                return Err(crate::server::status::key_directory_not_rotated("engine.pem", "engine", &loaded.key_id(), &message.key_id));
            }
            let before = self.market().keys().key_id();
            let older: Vec<_> = loaded.retired().iter().map(engine::crypto::RsaPrivate::public).collect();
            self.market().rotate_engine_key(&operator, &request_id, loaded).await.map_err(fail)?;
            self.state.live.add_older_engine_keys(older);
            let keys = self.market().keys();
            Ok(pb::EngineKeyResponse {
                current_key_id: keys.key_id(),
                key_ids: keys.set.iter().map(|key| key.key_id()).collect(),
                changed: before != keys.key_id(),
            })
        }
        .await;
        self.answer(result)
    }

    async fn rotate_token_key(&self, request: Request<pb::RotateTokenKeyRequest>) -> Result<Response<pb::TokenKeyResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let loaded = self.load_key_directory().await?;
            if loaded.token_key_id() != message.key_id {
                return Err(crate::server::status::key_directory_not_rotated(
                    "token.key",
                    "token",
                    &loaded.token_key_id().to_string(),
                    &message.key_id.to_string(),
                ));
            }
            let before = self.market().keys().token_key_id();
            self.market().rotate_token_key(&operator, &request_id, loaded).await.map_err(fail)?;
            let keys = self.market().keys();
            Ok(pb::TokenKeyResponse { current_key_id: keys.token_key_id(), key_ids: keys.token_keys().ids(), changed: before != keys.token_key_id() })
        }
        .await;
        self.answer(result)
    }

    async fn rotate_checkpoint_key(&self, request: Request<pb::RotateCheckpointKeyRequest>) -> Result<Response<pb::CheckpointKeyResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let loaded = self.load_key_directory().await?;
            let found = loaded.checkpoint.as_ref().map(|signer| signer.verifier().vkey()).unwrap_or_default();
            if found != message.vkey {
                return Err(crate::server::status::key_directory_not_rotated("checkpoint.key", "checkpoint", &found, &message.vkey));
            }
            let before = self.market().keys().checkpoint.as_ref().map(|signer| signer.verifier().vkey());
            let vkey = self.market().rotate_checkpoint_key(&operator, &request_id, loaded).await.map_err(fail)?;
            let retired_vkeys = self.market().config().await.map_err(fail)?.retired_checkpoint_vkeys.into_iter().rev().collect();
            Ok(pb::CheckpointKeyResponse { changed: before.as_deref() != Some(vkey.as_str()), vkey, retired_vkeys })
        }
        .await;
        self.answer(result)
    }

    async fn revoke_engine_key(&self, request: Request<pb::RevokeEngineKeyRequest>) -> Result<Response<pb::EngineKeyResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let changed = self.market().revoke_engine_key(&operator, &request_id, &message.key_id).await.map_err(fail)?;
            let keys = self.market().keys();
            Ok(pb::EngineKeyResponse { current_key_id: keys.key_id(), key_ids: keys.set.iter().map(|key| key.key_id()).collect(), changed })
        }
        .await;
        self.answer(result)
    }

    async fn drain_node(&self, request: Request<pb::NodeAdminRequest>) -> Result<Response<pb::NodeAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let node = id("node_id", &message.node_id, NodeId)?;
            self.market().drain_node(&operator, &request_id, &node).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::NodeAdminResponse { node_id: node.0, status: "drained".into() })
        }
        .await;
        self.answer(result)
    }

    async fn remove_node(&self, request: Request<pb::NodeAdminRequest>) -> Result<Response<pb::NodeAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let node = id("node_id", &message.node_id, NodeId)?;
            self.market().remove_node(&operator, &request_id, &node).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::NodeAdminResponse { node_id: node.0, status: "removed".into() })
        }
        .await;
        self.answer(result)
    }

    async fn suspend_merchant(&self, request: Request<pb::MerchantAdminRequest>) -> Result<Response<pb::MerchantAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let merchant = id("merchant_id", &message.merchant_id, MerchantId)?;
            let done = self.market().suspend_merchant(&operator, &request_id, &merchant, &message.reason).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::MerchantAdminResponse { merchant_id: merchant.0, status: merchant_status_name(done.state).into(), changed: done.changed })
        }
        .await;
        self.answer(result)
    }

    async fn reinstate_merchant(&self, request: Request<pb::MerchantAdminRequest>) -> Result<Response<pb::MerchantAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let merchant = id("merchant_id", &message.merchant_id, MerchantId)?;
            let done = self.market().reinstate_merchant(&operator, &request_id, &merchant, &message.reason).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::MerchantAdminResponse { merchant_id: merchant.0, status: merchant_status_name(done.state).into(), changed: done.changed })
        }
        .await;
        self.answer(result)
    }

    async fn revoke_auditor(&self, request: Request<pb::AuditorAdminRequest>) -> Result<Response<pb::AuditorAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let auditor = id("auditor_id", &message.auditor_id, AuditorId)?;
            let done = self.market().revoke_auditor(&operator, &request_id, &auditor, &message.reason).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::AuditorAdminResponse { auditor_id: auditor.0, status: auditor_status_name(done.state).into(), changed: done.changed })
        }
        .await;
        self.answer(result)
    }

    async fn add_publisher_key(&self, request: Request<pb::AddPublisherKeyRequest>) -> Result<Response<pb::AddPublisherKeyResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let publisher = id("publisher_id", &message.publisher_id, PublisherId)?;
            let added = self.market().add_publisher_key(&operator, &request_id, &publisher, &message.public_key_der).await.map_err(fail)?;
            Ok(pb::AddPublisherKeyResponse {
                publisher_id: publisher.0,
                key_id: added.key_id,
                changed: added.changed,
                keys: u32::try_from(added.keys).unwrap_or(u32::MAX),
            })
        }
        .await;
        self.answer(result)
    }

    async fn withdraw_media(&self, request: Request<pb::WithdrawMediaRequest>) -> Result<Response<pb::MediaAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let done = self.market().withdraw_media(&operator, &request_id, &media, &message.reason).await.map_err(fail)?;
            Ok(media_answer(&media, done))
        }
        .await;
        self.answer(result)
    }

    async fn change_price(&self, request: Request<pb::ChangePriceRequest>) -> Result<Response<pb::MediaAdminResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let done = self.market().change_price(&operator, &request_id, &media, message.price_minor).await.map_err(fail)?;
            Ok(media_answer(&media, done))
        }
        .await;
        self.answer(result)
    }

    async fn revoke_certs(&self, request: Request<pb::RevokeCertsRequest>) -> Result<Response<pb::RevokeCertsResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            // One serial, or every certificate when asked in so many words: never both, and
            // a request that forgot the serial does not revoke them all.
            let serial = match (message.cert_serial.as_str(), message.every_cert) {
                ("", true) => None,
                (serial, false) => Some(id("cert_serial", serial, CertSerial)?),
                (_, true) => return Err(invalid("every_cert", "name a cert_serial or every_cert, not both")),
            };
            let done = self.market().revoke_certs(&operator, &request_id, &consumer, serial.as_ref(), &message.reason).await.map_err(fail)?;
            Ok(pb::RevokeCertsResponse {
                consumer_id: consumer.0,
                cert_serials: done.state.into_iter().map(|serial| serial.0).collect(),
                changed: done.changed,
            })
        }
        .await;
        self.answer(result)
    }

    async fn get_ledger(&self, request: Request<pb::GetLedgerRequest>) -> Result<Response<pb::LedgerResponse>, Status> {
        let result = async {
            Self::operator(&request)?;
            self.ledger().await
        }
        .await;
        self.answer(result)
    }

    async fn list_parties(&self, request: Request<pb::ListPartiesRequest>) -> Result<Response<pb::PartiesPage>, Status> {
        let result = async {
            Self::operator(&request)?;
            self.parties(request.get_ref()).await
        }
        .await;
        self.answer(result)
    }

    async fn get_account_points(&self, request: Request<pb::AccountPointsRequest>) -> Result<Response<pb::PointsBalanceResponse>, Status> {
        let result = async {
            Self::operator(&request)?;
            self.account_points(request.get_ref()).await
        }
        .await;
        self.answer(result)
    }
}

impl Api {
    /// The engine's key directory as it is now (what a rotation takes up). Reading and
    /// checking RSA keys runs off the async threads.
    async fn load_key_directory(&self) -> Result<engine::app::EngineKeys, Status> {
        let dir = self.state.config.keys_dir.clone();
        tokio::task::spawn_blocking(move || crate::common::keys::load_engine_keys(&dir))
            .await
            .map_err(|error| crate::server::status::key_directory_task_failed(&error))?
            .map_err(|error| crate::server::status::key_directory_unloadable(&error))
    }
}
