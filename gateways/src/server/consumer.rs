//! ConsumerService: what a consumer reads of their own, with a request signed by their
//! passport (no credential; the front door admits it within the limits). The signature,
//! the certificate and the clock window are checked by `Market::points_of_consumer`.

use super::api::*;
use engine::ids::*;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::consumer_service_server::ConsumerService for Api {
    async fn get_points(&self, request: Request<pb::GetPointsRequest>) -> Result<Response<pb::PointsBalanceResponse>, Status> {
        let result = async {
            let message = request.get_ref();
            let consumer = id("consumer_id", &message.consumer_id, ConsumerId)?;
            let serial = id("cert_serial", &message.cert_serial, CertSerial)?;
            if message.signature.is_empty() || message.signature.len() > crate::common::spend::SIGNATURE_BYTES_MAX {
                return Err(invalid("signature", &format!("must be 1..={} bytes", crate::common::spend::SIGNATURE_BYTES_MAX)));
            }
            let account = self.market().points_of_consumer(&consumer, &serial, Millis(message.issued_at_ms), &message.signature).await.map_err(fail)?;
            Ok(pb::PointsBalanceResponse { account_id: consumer.0, balance: account.balance, held: account.held_total(), available: account.available() })
        }
        .await;
        self.answer(result)
    }
}
