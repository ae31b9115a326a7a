//! DeliveryService: node registration and heartbeats, assignment feeds, redemption,
//! delivery completion and failure, previews, media fetches by nodes.

use super::api::*;
use super::*;
use engine::domain::{Event, Rejection};
use engine::ids::*;
use engine::media_store::Part;
use engine::placement::Heartbeat;
use futures::StreamExt;
use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Streams `bytes` from `offset` as MediaChunks through a bounded channel.
pub(super) fn chunk_stream(bytes: bytes::Bytes, offset: usize) -> ReceiverStream<Result<pb::MediaChunk, Status>> {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
    tokio::spawn(async move {
        let total = bytes.len() as u64;
        let mut position = offset.min(bytes.len());
        loop {
            let end = (position + CHUNK_BYTES).min(bytes.len());
            let chunk = pb::MediaChunk { offset: position as u64, data: bytes.slice(position..end), total_bytes: total };
            if sender.send(Ok(chunk)).await.is_err() || end == bytes.len() {
                return;
            }
            position = end;
        }
    });
    ReceiverStream::new(receiver)
}

#[tonic::async_trait]
impl pb::delivery_service_server::DeliveryService for Api {
    async fn register_node(&self, request: Request<pb::RegisterNodeRequest>) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let endpoint = message.endpoint.trim();
            if endpoint.len() > ENDPOINT_CHARS_MAX || !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid("endpoint", "must be an http:// or https:// URL of at most 256 characters"));
            }
            let (access_key, recorded) = self.market().announce_node(&node, message.slots_max).await.map_err(fail)?;
            let access_keys = self.market().node_access_keys(&node).map_err(fail)?;
            self.state.nodes.announce(&node, endpoint);
            super::gossip::tell(&self.state, &node, Heartbeat::default()).await;
            Ok(pb::RegisterNodeResponse {
                node_id: node.0,
                access_key: access_key.expose().to_vec(),
                slots_max: recorded.slots_max,
                region: recorded.region,
                access_keys: access_keys.into_iter().map(|(token_key_id, key)| pb::NodeAccessKey { token_key_id, key: key.expose().to_vec() }).collect(),
            })
        }
        .await;
        self.answer(result)
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let beat = Heartbeat {
                slots_in_use: message.slots_in_use,
                cache_items: message.cache_items,
                cache_accesses: message.cache_accesses,
                cache_misses: message.cache_misses,
            };
            if !self.state.nodes.heartbeat(&node, beat) {
                return Err(crate::server::status::node_must_register());
            }
            super::gossip::tell(&self.state, &node, beat).await;
            Ok(pb::HeartbeatResponse { token_key_id: self.market().keys().token_key_id() })
        }
        .await;
        self.answer(result)
    }

    type SubscribeAssignmentsStream = ReceiverStream<Result<pb::Assignment, Status>>;

    async fn subscribe_assignments(&self, request: Request<pb::SubscribeAssignmentsRequest>) -> Result<Response<Self::SubscribeAssignmentsStream>, Status> {
        let node = match Self::node(&request) {
            Ok(node) => node,
            Err(status) => return self.answer(Err(status)),
        };
        let feeds_max = self.state.config.limits.assignment_feeds_max;
        let mut feed = match self.state.feeds.open(&node, feeds_max).await {
            Ok(feed) => feed,
            Err(full) => {
                self.state.metrics.count_limit("assignment_feeds_max");
                return self.answer(Err(crate::server::status::assignment_feeds_full(full.feeds_max)));
            }
        };
        let from = Seq(request.get_ref().after_seq.saturating_add(1));
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        let mut events = self.state.log.follow(from);
        let mut shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            let mut replaced = false;
            loop {
                let next = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    // The only change is to true (a newer feed of this node); a dropped
                    // sender (the map forgot this feed) ends it too.
                    _ = feed.replaced.changed() => {
                        replaced = true;
                        None
                    }
                    _ = sender.closed() => return,
                    next = events.next() => next,
                };
                if replaced {
                    // Never waits on a client that stopped reading: the slot must come back.
                    let _ = sender.try_send(Err(crate::server::status::assignment_feed_replaced()));
                    return;
                }
                let Some(stored) = next else { return };
                let stored = match stored {
                    Ok(stored) => stored,
                    Err(error) => {
                        let _ = sender.send(Err(crate::server::status::stream_unreadable("the assignment feed", &error))).await;
                        return;
                    }
                };
                // Only this node's events: cheap subject filters first, then decode.
                if !(stored.subject.starts_with("vs.voucher.") || stored.subject.starts_with("vs.preview.")) {
                    continue;
                }
                let recorded = match engine::wire::decode(&stored.payload) {
                    Ok(recorded) => recorded,
                    Err(error) => {
                        let _ = sender.send(Err(crate::server::status::event_undecodable(stored.seq.0, &error))).await;
                        return;
                    }
                };
                let assignment = match recorded.event {
                    Event::VoucherIssued { voucher_id, node_id, media_ids, rendition, access_expires_at, .. } if node_id == node => pb::Assignment {
                        seq: stored.seq.0,
                        voucher_id: voucher_id.0,
                        media_ids: media_ids.into_iter().map(|m| m.0).collect(),
                        rendition,
                        access_expires_at_ms: access_expires_at.0,
                        preview_id: String::new(),
                    },
                    Event::PreviewStarted { preview_id, media_id, node_id, .. } if node_id == node => pb::Assignment {
                        seq: stored.seq.0,
                        voucher_id: String::new(),
                        media_ids: vec![media_id.0],
                        rendition: "preview".into(),
                        access_expires_at_ms: 0,
                        preview_id: preview_id.0,
                    },
                    _ => continue,
                };
                if sender.send(Ok(assignment)).await.is_err() {
                    return;
                }
            }
        });
        self.answer(Ok(ReceiverStream::new(receiver)))
    }

    async fn redeem(&self, request: Request<pb::RedeemRequest>) -> Result<Response<pb::RedeemResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let serial = id("cert_serial", &message.cert_serial, CertSerial)?;
            let market = self.market();
            let answer = if message.recover {
                market.recover(&node, &request_id, &voucher, &consumer, &serial, &message.challenge, &message.proof).await
            } else {
                market.redeem(&node, &request_id, &voucher, &consumer, &serial, &message.challenge, &message.proof).await
            }
            .map_err(fail)?;
            Ok(pb::RedeemResponse {
                voucher_id: answer.voucher_id.0,
                keys: answer
                    .keys
                    .into_iter()
                    .zip(answer.transactions)
                    .map(|((media, wrapped), signed)| pb::WrappedKey {
                        media_id: media.0,
                        wrapped_key: wrapped,
                        transaction: Some(transaction_to_proto(signed.record)),
                        transaction_signature: signed.signature,
                    })
                    .collect(),
            })
        }
        .await;
        self.answer(result)
    }

    async fn complete_delivery(&self, request: Request<pb::CompleteDeliveryRequest>) -> Result<Response<pb::CompleteDeliveryResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let content_hash = hash32("content_hash", &message.content_hash)?;
            let proof = hash32("confirm_proof", &message.confirm_proof)?;
            self.market().complete_delivery(&node, &request_id, &voucher, &media, content_hash, message.size_bytes, &proof).await.map_err(fail)?;
            Ok(pb::CompleteDeliveryResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn fail_delivery(&self, request: Request<pb::FailDeliveryRequest>) -> Result<Response<pb::FailDeliveryResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let received_hash = hash32("received_hash", &message.received_hash)?;
            let proof = hash32("confirm_proof", &message.confirm_proof)?;
            self.market().fail_delivery(&node, &request_id, &voucher, &message.reason, &media, &received_hash, &proof).await.map_err(fail)?;
            Ok(pb::FailDeliveryResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn end_preview(&self, request: Request<pb::EndPreviewRequest>) -> Result<Response<pb::EndPreviewResponse>, Status> {
        let result = async {
            let node = Self::node(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let preview = id("preview_id", &message.preview_id, PreviewId)?;
            self.market().end_preview(&node, &request_id, &preview, message.played_ms).await.map_err(fail)?;
            Ok(pb::EndPreviewResponse {})
        }
        .await;
        self.answer(result)
    }

    type FetchMediaStream = ReceiverStream<Result<pb::MediaChunk, Status>>;

    async fn fetch_media(&self, request: Request<pb::FetchMediaRequest>) -> Result<Response<Self::FetchMediaStream>, Status> {
        let result = async {
            Self::node(&request)?;
            let message = request.get_ref();
            let media = id("media_id", &message.media_id, MediaId)?;
            let part = match pb::MediaPart::try_from(message.part) {
                Ok(pb::MediaPart::Container) => Part::Container,
                Ok(pb::MediaPart::PreviewClip) => Part::PreviewClip,
                Ok(pb::MediaPart::Unspecified) | Err(_) => return Err(invalid("part", "must be MEDIA_PART_CONTAINER or MEDIA_PART_PREVIEW_CLIP")),
            };
            let bytes = self
                .state
                .media
                .get(&media.0, part)
                .await
                .map_err(|error| crate::server::status::media_store_failed("cannot read the media store", &error))?
                .ok_or_else(|| crate::server::status::from_rejection(&Rejection::NotFound { kind: "media part", id: media.0.clone() }))?;
            Ok(chunk_stream(bytes, 0))
        }
        .await;
        self.answer(result)
    }
}

/// The wire form of an engine-signed transaction record (the player rebuilds the canonical
/// bytes from these fields).
pub(super) fn transaction_to_proto(record: engine::media::TransactionRecord) -> pb::TransactionRecord {
    pb::TransactionRecord {
        voucher_id: record.voucher_id.0,
        media_id: record.media_id.0,
        rendition: record.rendition,
        node_id: record.node_id.0,
        delivered_at_ms: record.delivered_at.0,
        engine_key_id: record.engine_key_id,
        consumer_id: record.consumer_id.0,
        cert_serial: record.cert_serial.0,
        content_hash: record.content_hash.to_vec(),
        recovery: record.recovery,
    }
}
