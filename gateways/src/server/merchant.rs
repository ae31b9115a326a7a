//! MerchantService: reserve, authorize, void, issue, preview, get, duplication orders, and
//! the merchant's reads (its vouchers, statements, the catalog: `reads`).
//! Each handler checks and converts its request, calls one `Market` method and maps the
//! answer through `status`.

use super::api::*;
use engine::domain::event::Payment;
use engine::domain::validate;
use engine::ids::*;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::merchant_service_server::MerchantService for Api {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media_ids = message.media_ids.iter().map(|m| id("media_ids", m, MediaId)).collect::<Result<Vec<_>, _>>()?;
            let payment = if message.points_account.is_empty() {
                Payment::Merchant { payment_ref: message.payment_ref.clone() }
            } else {
                Payment::Points { account: id("points_account", &message.points_account, AccountId)? }
            };
            let spend = match &message.spend_authorization {
                Some(authorization) => Some(crate::common::spend::from_pb(authorization).map_err(|(field, reason)| invalid(field, &reason))?),
                None => None,
            };
            let answer = self
                .market()
                .reserve_rental(&merchant, &request_id, &media_ids, &message.rendition, message.ttl_ms, payment, spend.as_ref(), message.rental_ms)
                .await
                .map_err(fail)?;
            Ok(pb::ReserveResponse {
                voucher_id: answer.voucher_id.0,
                expires_at_ms: answer.expires_at.0,
                price_minor: answer.price_minor,
                currency: answer.currency,
                rental_ms: answer.rental_ms,
            })
        }
        .await;
        self.answer(result)
    }

    async fn authorize(&self, request: Request<pb::AuthorizeRequest>) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let answer = self.market().authorize(&merchant, &request_id, &voucher).await.map_err(fail)?;
            Ok(pb::AuthorizeResponse {
                voucher_id: answer.voucher_id.0,
                receipt: answer.receipt.expose().to_vec(),
                receipt_generation: answer.receipt_generation,
                rental_until_ms: answer.rental_until.0,
            })
        }
        .await;
        self.answer(result)
    }

    async fn void(&self, request: Request<pb::VoidRequest>) -> Result<Response<pb::VoidResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            self.market().void(&merchant, &request_id, &voucher).await.map_err(fail)?;
            Ok(pb::VoidResponse { voucher_id: voucher.0 })
        }
        .await;
        self.answer(result)
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Result<Response<pb::RefundResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let status = self.market().refund(&merchant, &request_id, &voucher, &message.reason, message.chargeback).await.map_err(fail)?;
            Ok(pb::RefundResponse { voucher_id: voucher.0, status: status.name().to_string() })
        }
        .await;
        self.answer(result)
    }

    async fn issue_voucher(&self, request: Request<pb::IssueVoucherRequest>) -> Result<Response<pb::IssueVoucherResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let voucher = id("voucher_id", &message.voucher_id, VoucherId)?;
            let access_ttl_ms = self.state.configured("access.ttl_ms").await.unwrap_or(self.state.config.access_ttl_ms);
            let answer = self.market().issue(&merchant, &request_id, &voucher, region(&message.region), access_ttl_ms).await.map_err(fail)?;
            Ok(pb::IssueVoucherResponse {
                voucher_id: answer.voucher_id.0,
                node_endpoint: self.state.nodes.endpoint(&answer.node_id).ok_or_else(|| crate::server::status::node_not_announced(&answer.node_id.0))?,
                node_id: answer.node_id.0,
                access_token: answer.access_token.to_vec(),
                access_expires_at_ms: answer.access_expires_at.0,
                rental_until_ms: answer.rental_until.0,
                token_key_id: answer.token_key_id,
            })
        }
        .await;
        self.answer(result)
    }

    async fn preview(&self, request: Request<pb::PreviewRequest>) -> Result<Response<pb::PreviewResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let (preview, node) = self.market().preview(&merchant, &request_id, &media, region(&message.region)).await.map_err(fail)?;
            Ok(pb::PreviewResponse {
                preview_id: preview.0,
                node_endpoint: self.state.nodes.endpoint(&node).ok_or_else(|| crate::server::status::node_not_announced(&node.0))?,
                node_id: node.0,
            })
        }
        .await;
        self.answer(result)
    }

    async fn get_voucher(&self, request: Request<pb::GetVoucherRequest>) -> Result<Response<pb::VoucherView>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let voucher = id("voucher_id", &request.get_ref().voucher_id, VoucherId)?;
            let state = self.market().get_voucher(&merchant, &voucher).await.map_err(fail)?;
            let node_endpoint = state.node.as_ref().and_then(|node| self.state.nodes.endpoint(node)).unwrap_or_default();
            Ok(voucher_view(&state, node_endpoint))
        }
        .await;
        self.answer(result)
    }

    async fn place_order(&self, request: Request<pb::PlaceOrderRequest>) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let media = id("media_id", &message.media_id, MediaId)?;
            let order = self.market().place_order(&merchant, &request_id, &media, message.units).await.map_err(fail)?;
            Ok(pb::PlaceOrderResponse { order_id: order.0 })
        }
        .await;
        self.answer(result)
    }

    async fn bind_unit(&self, request: Request<pb::BindUnitRequest>) -> Result<Response<pb::BindUnitResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let order = id("order_id", &message.order_id, OrderId)?;
            validate::id("device_id", &message.device_id).map_err(|r| crate::server::status::from_rejection(&r))?;
            let serial = id("device_cert_serial", &message.device_cert_serial, CertSerial)?;
            let wrapped = self
                .market()
                .bind_unit(&merchant, &request_id, &order, message.unit, &message.device_id, &serial, &message.device_public_key_der)
                .await
                .map_err(fail)?;
            Ok(pb::BindUnitResponse { wrapped_media_key: wrapped })
        }
        .await;
        self.answer(result)
    }

    async fn complete_unit(&self, request: Request<pb::CompleteUnitRequest>) -> Result<Response<pb::CompleteUnitResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let order = id("order_id", &message.order_id, OrderId)?;
            self.market().complete_unit(&merchant, &request_id, &order, message.unit).await.map_err(fail)?;
            Ok(pb::CompleteUnitResponse {})
        }
        .await;
        self.answer(result)
    }

    async fn sell_points(&self, request: Request<pb::TopUpPointsRequest>) -> Result<Response<pb::TopUpPointsResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let account = id("account_id", &message.account_id, AccountId)?;
            let balance =
                self.market().sell_points(&merchant, &request_id, &account, message.amount, &message.currency, &message.reference).await.map_err(fail)?;
            Ok(pb::TopUpPointsResponse { balance })
        }
        .await;
        self.answer(result)
    }

    async fn set_rental_window(&self, request: Request<pb::SetRentalWindowRequest>) -> Result<Response<pb::RentalWindowResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            let message = request.get_ref();
            let request_id = request_id(&message.request_id)?;
            let changed = self.market().set_rental_window(&merchant, &request_id, message.window_ms_min, message.window_ms_max).await.map_err(fail)?;
            Ok(pb::RentalWindowResponse { window_ms_min: message.window_ms_min, window_ms_max: message.window_ms_max, changed })
        }
        .await;
        self.answer(result)
    }

    async fn list_vouchers(&self, request: Request<pb::ListVouchersRequest>) -> Result<Response<pb::VoucherPage>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            self.list_vouchers(&merchant, request.get_ref()).await
        }
        .await;
        self.answer(result)
    }

    async fn list_orders(&self, request: Request<pb::ListOrdersRequest>) -> Result<Response<pb::OrderPage>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            self.list_orders(&merchant, request.get_ref()).await
        }
        .await;
        self.answer(result)
    }

    async fn get_statement(&self, request: Request<pb::GetStatementRequest>) -> Result<Response<pb::StatementResponse>, Status> {
        let result = async {
            let merchant = Self::merchant(&request)?;
            self.statement(&merchant, request.get_ref()).await
        }
        .await;
        self.answer(result)
    }

    async fn list_catalog(&self, request: Request<pb::ListCatalogRequest>) -> Result<Response<pb::CatalogPage>, Status> {
        let result = async {
            Self::merchant(&request)?;
            let message = request.get_ref();
            self.catalog_page(None, &message.cursor, message.limit).await
        }
        .await;
        self.answer(result)
    }

    async fn search_catalog(&self, request: Request<pb::SearchCatalogRequest>) -> Result<Response<pb::CatalogPage>, Status> {
        let result = async {
            Self::merchant(&request)?;
            let message = request.get_ref();
            self.catalog_page(Some(&message.text), &message.cursor, message.limit).await
        }
        .await;
        self.answer(result)
    }
}
