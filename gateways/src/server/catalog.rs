//! CatalogService: publishing media, registering parties, certifying consumers, revoking
//! certificates, points top-ups (operator only).

use super::api::*;
use engine::app::PublishInput;
use engine::domain::event::{PreviewClip, Rendition, RoyaltyTerms};
use engine::ids::*;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for Api {
    async fn publish_media(&self, request: Request<pb::PublishMediaRequest>) -> Result<Response<pb::PublishMediaResponse>, Status> {
        let result = async {
            let publisher = Self::publishing(&request)?;
            let mut message = request.into_inner();
            let request_id = request_id(&message.request_id)?;
            let container = bytes::Bytes::from(std::mem::take(&mut message.container));
            // A publisher's terms come from its account: it may leave them out.
            let has_terms = message.terms.is_some();
            if !has_terms && matches!(publisher, Publishing::Operator(_)) {
                return Err(invalid("terms", "royalty terms are required"));
            }
            let terms = message.terms.clone().unwrap_or_default();
            let renditions = message
                .renditions
                .iter()
                .map(|r| {
                    Ok(Rendition {
                        name: r.name.clone(),
                        bitrate_kbps: r.bitrate_kbps,
                        content_hash: hash32("renditions.content_hash", &r.content_hash)?,
                        size_bytes: r.size_bytes,
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            let preview = message.preview.map(|p| PreviewClip { start_ms: p.start_ms, duration_ms: p.duration_ms }).unwrap_or_default();
            let input = PublishInput {
                title: message.title,
                artist: message.artist,
                authors: message.authors,
                length_ms: message.length_ms,
                price_minor: message.price_minor,
                currency: message.currency,
                terms: RoyaltyTerms {
                    retailer_bps: terms.retailer_bps,
                    distributor_bps: terms.distributor_bps,
                    owner_bps: terms.owner_bps,
                    distributor: terms.distributor,
                    owner: terms.owner,
                    rights_agent: terms.rights_agent,
                },
                renditions,
                preview,
                image_descriptor: message.image_descriptor,
                for_sale: message.for_sale,
                wrapped_media_key: message.wrapped_media_key,
            };
            let preview_clip = bytes::Bytes::from(message.preview_clip);
            let media = match publisher {
                Publishing::Operator(operator) => self.market().publish(&operator, &request_id, input, container, preview_clip, &self.state.media).await,
                Publishing::Publisher(publisher) => {
                    let request_terms = Some(input.terms.clone()).filter(|_| has_terms);
                    self.market().publish_as_publisher(&publisher, &request_id, input, request_terms, container, preview_clip, &self.state.media).await
                }
            }
            .map_err(fail)?;
            Ok(pb::PublishMediaResponse { media_id: media.0 })
        }
        .await;
        self.answer(result)
    }

    async fn register_merchant(&self, request: Request<pb::RegisterMerchantRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let credential = self.market().register_merchant(&operator, &request_id, &message.name).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn register_node_credential(&self, request: Request<pb::RegisterNodeCredentialRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let (credential, _access_key) = self.market().register_node(&operator, &request_id, &message.region, message.slots_max).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn register_publisher(&self, request: Request<pb::RegisterPublisherRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let terms = message.terms.as_ref().ok_or_else(|| invalid("terms", "the publisher's royalty terms are required"))?;
            let terms = RoyaltyTerms {
                retailer_bps: terms.retailer_bps,
                distributor_bps: terms.distributor_bps,
                owner_bps: terms.owner_bps,
                distributor: terms.distributor.clone(),
                owner: terms.owner.clone(),
                rights_agent: terms.rights_agent.clone(),
            };
            let credential = self.market().register_publisher(&operator, &request_id, &message.name, terms, &message.public_keys_der).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn register_auditor(&self, request: Request<pb::RegisterAuditorRequest>) -> Result<Response<pb::CredentialResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let credential = self.market().register_auditor(&operator, &request_id, &message.name).await.map_err(fail)?;
            self.state.credentials_applied().await;
            Ok(pb::CredentialResponse { id: credential.id, secret: credential.secret.expose().to_vec() })
        }
        .await;
        self.answer(result)
    }

    async fn certify_consumer(&self, request: Request<pb::CertifyConsumerRequest>) -> Result<Response<pb::Certificate>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let cert = self.market().certify_consumer(&operator, &request_id, &consumer, &message.public_key_der, message.validity_ms).await.map_err(fail)?;
            Ok(certificate_message(&consumer, &cert))
        }
        .await;
        self.answer(result)
    }

    async fn revoke_cert(&self, request: Request<pb::RevokeCertRequest>) -> Result<Response<pb::RevokeCertResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let serial = id("cert_serial", &message.cert_serial, CertSerial)?;
            self.market().revoke_cert(&operator, &request_id, &consumer, &serial, &message.reason).await.map_err(fail)?;
            Ok(pb::RevokeCertResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn top_up_points(&self, request: Request<pb::TopUpPointsRequest>) -> Result<Response<pb::TopUpPointsResponse>, Status> {
        let result = async {
            let operator = Self::operator(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let account = id("account_id", &message.account_id, AccountId)?;
            if !message.currency.is_empty() {
                return Err(invalid("currency", "only a merchant's SellPoints names a currency"));
            }
            let balance = self.market().top_up(&operator, &request_id, &account, message.amount, &message.reference).await.map_err(fail)?;
            Ok(pb::TopUpPointsResponse { balance })
        }
        .await;
        self.answer(result)
    }
}
