//! The RPCs of the engine's six services, declared once for the tests that call them all
//! (`grpc_bad_input.rs`, `grpc_fuzz.rs`): the `Rpc` enum, typed requests (`Req`) and their
//! dispatch through the generated clients, raw bodies no generated client would send, the
//! credential metadata a call presents (`Meta`), and protobuf encoding helpers.

use engine::crypto::SecretKey;
use gateways::common::cred::{Credential, ID_HEADER, SECRET_HEADER};
use proto::v1 as pb;
use tonic::Status;
use tonic::transport::Channel;

use super::{REQUEST_BYTES_MAX, UPLOAD_BYTES_MAX};

// ---- callers: what metadata a request carries ----

/// The credential metadata a call presents (or fails to present), as an interceptor.
#[derive(Clone)]
pub struct Meta {
    pub label: String,
    pub id: Option<String>,
    pub secret_hex: Option<String>,
}

impl Meta {
    pub fn of(label: &str, credential: &Credential) -> Self {
        Self { label: label.to_string(), id: Some(credential.id.clone()), secret_hex: Some(hex::encode(credential.secret.expose())) }
    }

    pub fn anonymous() -> Self {
        Self { label: "anonymous".into(), id: None, secret_hex: None }
    }

    pub fn wrong_secret(label: &str, credential: &Credential) -> Self {
        Self { label: format!("{label}, wrong secret"), id: Some(credential.id.clone()), secret_hex: Some(hex::encode(SecretKey::random().expose())) }
    }

    pub fn unknown_id(label: &str, credential: &Credential) -> Self {
        let id = format!("{}0unknown", &credential.id[..1]);
        Self { label: format!("unknown {label} id"), id: Some(id), secret_hex: Some(hex::encode(credential.secret.expose())) }
    }

    pub fn id_only(label: &str, credential: &Credential) -> Self {
        Self { label: format!("{label}, no secret"), id: Some(credential.id.clone()), secret_hex: None }
    }

    pub fn secret_not_hex(label: &str, credential: &Credential) -> Self {
        Self { label: format!("{label}, secret not hex"), id: Some(credential.id.clone()), secret_hex: Some("zz".repeat(32)) }
    }
}

impl tonic::service::Interceptor for Meta {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        // A client-side failure is told apart from the engine's answers by its code.
        let value = |text: &str| text.parse::<tonic::metadata::AsciiMetadataValue>().map_err(|_| Status::cancelled("test metadata is not ASCII"));
        if let Some(id) = &self.id {
            request.metadata_mut().insert(ID_HEADER, value(id)?);
        }
        if let Some(secret) = &self.secret_hex {
            request.metadata_mut().insert(SECRET_HEADER, value(secret)?);
        }
        Ok(request)
    }
}

// ---- every RPC, typed and raw ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Merchant,
    Delivery,
    Catalog,
    Audit,
    Admin,
    /// No credential: each request is signed with a consumer's passport.
    Consumer,
}

impl Service {
    pub const ALL: [Service; 6] = [Service::Merchant, Service::Delivery, Service::Catalog, Service::Audit, Service::Admin, Service::Consumer];

    pub fn full_name(self) -> &'static str {
        match self {
            Service::Merchant => "vouchsafe.v1.MerchantService",
            Service::Delivery => "vouchsafe.v1.DeliveryService",
            Service::Catalog => "vouchsafe.v1.CatalogService",
            Service::Audit => "vouchsafe.v1.AuditService",
            Service::Admin => "vouchsafe.v1.AdminService",
            Service::Consumer => "vouchsafe.v1.ConsumerService",
        }
    }
}

/// What an accepted typed call answered: the response's Debug text (compared with what a
/// test expects in it, never printed: it can hold secrets) and its encoding (decoded).
pub struct Answered {
    pub text: String,
    pub encoded: Vec<u8>,
}

/// Its size only, for a failed `expect_err`: the response can hold secrets.
impl std::fmt::Debug for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a response of {} bytes", self.encoded.len())
    }
}

/// Declares the RPCs once: the `Rpc` enum, the `Req` enum of typed requests, their
/// encoding, whether bytes decode as an RPC's request, and the typed dispatch through the
/// generated clients.
macro_rules! rpcs {
    (@streaming unary) => { false };
    (@streaming stream) => { true };
    (@answer unary, $call:expr) => {{
        let response = $call.await?.into_inner();
        Ok(Answered { text: format!("{response:?}"), encoded: prost::Message::encode_to_vec(&response) })
    }};
    // The headers arrived (no error before the first message): that is the answer.
    (@answer stream, $call:expr) => {{ drop($call.await?); Ok(Answered { text: String::from("a stream"), encoded: Vec::new() }) }};
    (@client Merchant, $channel:expr, $who:expr) => { pb::merchant_service_client::MerchantServiceClient::with_interceptor($channel, $who) };
    (@client Delivery, $channel:expr, $who:expr) => { pb::delivery_service_client::DeliveryServiceClient::with_interceptor($channel, $who) };
    (@client Catalog, $channel:expr, $who:expr) => { pb::catalog_service_client::CatalogServiceClient::with_interceptor($channel, $who) };
    (@client Audit, $channel:expr, $who:expr) => { pb::audit_service_client::AuditServiceClient::with_interceptor($channel, $who) };
    (@client Admin, $channel:expr, $who:expr) => { pb::admin_service_client::AdminServiceClient::with_interceptor($channel, $who) };
    (@client Consumer, $channel:expr, $who:expr) => { pb::consumer_service_client::ConsumerServiceClient::with_interceptor($channel, $who) };
    ($($variant:ident = $service:ident . $method:ident ($message:ident) $shape:ident;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Rpc { $($variant),* }

        impl Rpc {
            pub const ALL: &[Rpc] = &[$(Rpc::$variant),*];

            pub fn service(self) -> Service {
                match self { $(Rpc::$variant => Service::$service),* }
            }

            pub fn name(self) -> &'static str {
                match self { $(Rpc::$variant => stringify!($variant)),* }
            }

            pub fn streaming(self) -> bool {
                match self { $(Rpc::$variant => rpcs!(@streaming $shape)),* }
            }

            /// The RPC's request with every field empty.
            pub fn empty(self) -> Req {
                match self { $(Rpc::$variant => Req::$variant(pb::$message::default())),* }
            }

            /// Whether `bytes` decode as this RPC's request message (as tonic will try).
            pub fn decodes(self, bytes: &[u8]) -> bool {
                match self { $(Rpc::$variant => <pb::$message as prost::Message>::decode(bytes).is_ok()),* }
            }
        }

        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug)]
        pub enum Req { $($variant(pb::$message)),* }

        impl Req {
            pub fn rpc(&self) -> Rpc {
                match self { $(Req::$variant(_) => Rpc::$variant),* }
            }

            pub fn encode(&self) -> Vec<u8> {
                match self { $(Req::$variant(message) => prost::Message::encode_to_vec(message)),* }
            }
        }

        /// Sends a typed request; the answer is the response, or "a stream" once a stream's
        /// headers arrived.
        pub async fn send_typed(channel: &Channel, who: &Meta, request: Req) -> Result<Answered, Status> {
            match request {
                $(Req::$variant(message) => {
                    let mut client = rpcs!(@client $service, channel.clone(), who.clone()).max_decoding_message_size(usize::MAX);
                    rpcs!(@answer $shape, client.$method(message))
                })*
            }
        }
    };
}

rpcs! {
    Reserve = Merchant.reserve(ReserveRequest) unary;
    Authorize = Merchant.authorize(AuthorizeRequest) unary;
    Void = Merchant.void(VoidRequest) unary;
    Refund = Merchant.refund(RefundRequest) unary;
    IssueVoucher = Merchant.issue_voucher(IssueVoucherRequest) unary;
    Preview = Merchant.preview(PreviewRequest) unary;
    GetVoucher = Merchant.get_voucher(GetVoucherRequest) unary;
    PlaceOrder = Merchant.place_order(PlaceOrderRequest) unary;
    BindUnit = Merchant.bind_unit(BindUnitRequest) unary;
    CompleteUnit = Merchant.complete_unit(CompleteUnitRequest) unary;
    SellPoints = Merchant.sell_points(TopUpPointsRequest) unary;
    RegisterNode = Delivery.register_node(RegisterNodeRequest) unary;
    Heartbeat = Delivery.heartbeat(HeartbeatRequest) unary;
    SubscribeAssignments = Delivery.subscribe_assignments(SubscribeAssignmentsRequest) stream;
    Redeem = Delivery.redeem(RedeemRequest) unary;
    CompleteDelivery = Delivery.complete_delivery(CompleteDeliveryRequest) unary;
    FailDelivery = Delivery.fail_delivery(FailDeliveryRequest) unary;
    EndPreview = Delivery.end_preview(EndPreviewRequest) unary;
    FetchMedia = Delivery.fetch_media(FetchMediaRequest) stream;
    PublishMedia = Catalog.publish_media(PublishMediaRequest) unary;
    RegisterMerchant = Catalog.register_merchant(RegisterMerchantRequest) unary;
    RegisterNodeCredential = Catalog.register_node_credential(RegisterNodeCredentialRequest) unary;
    CertifyConsumer = Catalog.certify_consumer(CertifyConsumerRequest) unary;
    RevokeCert = Catalog.revoke_cert(RevokeCertRequest) unary;
    TopUpPoints = Catalog.top_up_points(TopUpPointsRequest) unary;
    RegisterAuditor = Catalog.register_auditor(RegisterAuditorRequest) unary;
    Replay = Audit.replay(ReplayRequest) stream;
    VerifyChain = Audit.verify_chain(VerifyChainRequest) unary;
    Totals = Audit.totals(TotalsRequest) unary;
    GetStats = Admin.get_stats(GetStatsRequest) unary;
    GetConfig = Admin.get_config(GetConfigRequest) unary;
    SetConfig = Admin.set_config(SetConfigRequest) unary;
    DrainNode = Admin.drain_node(NodeAdminRequest) unary;
    RemoveNode = Admin.remove_node(NodeAdminRequest) unary;
    SuspendMerchant = Admin.suspend_merchant(MerchantAdminRequest) unary;
    ReinstateMerchant = Admin.reinstate_merchant(MerchantAdminRequest) unary;
    RevokeAuditor = Admin.revoke_auditor(AuditorAdminRequest) unary;
    WithdrawMedia = Admin.withdraw_media(WithdrawMediaRequest) unary;
    ChangePrice = Admin.change_price(ChangePriceRequest) unary;
    RevokeCerts = Admin.revoke_certs(RevokeCertsRequest) unary;
    GetPoints = Consumer.get_points(GetPointsRequest) unary;
    // The reads of issue 23, last: tables that follow this order add them at their end.
    ListVouchers = Merchant.list_vouchers(ListVouchersRequest) unary;
    GetStatement = Merchant.get_statement(GetStatementRequest) unary;
    ListCatalog = Merchant.list_catalog(ListCatalogRequest) unary;
    SearchCatalog = Merchant.search_catalog(SearchCatalogRequest) unary;
    GetLedger = Admin.get_ledger(GetLedgerRequest) unary;
    ListParties = Admin.list_parties(ListPartiesRequest) unary;
    GetAccountPoints = Admin.get_account_points(AccountPointsRequest) unary;
    ListOrders = Merchant.list_orders(ListOrdersRequest) unary;
    Statement = Audit.statement(RightsStatementRequest) unary;
    // Publisher accounts (issue 28).
    RegisterPublisher = Catalog.register_publisher(RegisterPublisherRequest) unary;
    AddPublisherKey = Admin.add_publisher_key(AddPublisherKeyRequest) unary;
    // Key rotation and merchants' rental windows (issue 28).
    RotateEngineKey = Admin.rotate_engine_key(RotateEngineKeyRequest) unary;
    RevokeEngineKey = Admin.revoke_engine_key(RevokeEngineKeyRequest) unary;
    RotateTokenKey = Admin.rotate_token_key(RotateTokenKeyRequest) unary;
    RotateCheckpointKey = Admin.rotate_checkpoint_key(RotateCheckpointKeyRequest) unary;
    SetRentalWindow = Merchant.set_rental_window(SetRentalWindowRequest) unary;
}

impl Rpc {
    pub fn path(self) -> String {
        format!("/{}/{}", self.service().full_name(), self.name())
    }

    /// The front door's body limit for this RPC, gRPC frame header included.
    pub fn body_limit(self) -> usize {
        if self == Rpc::PublishMedia { UPLOAD_BYTES_MAX } else { REQUEST_BYTES_MAX }
    }

    /// Whether field 1 of the request is a `string` (so invalid UTF-8 there cannot decode).
    pub fn field_one_is_string(self) -> bool {
        !matches!(
            self,
            Rpc::Heartbeat | Rpc::SubscribeAssignments | Rpc::Replay | Rpc::VerifyChain | Rpc::Totals | Rpc::GetStats | Rpc::GetConfig | Rpc::GetLedger
        )
    }
}

/// Writes and reads message bytes as they are: for bodies no generated client would send.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut out);
        Ok(Some(out))
    }
}

/// Sends `message` as it is to `path`; the answer is "a stream" or the response's size.
pub async fn send_raw(channel: &Channel, who: &Meta, path: &str, streaming: bool, message: Vec<u8>) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(channel.clone(), who.clone()));
    grpc.ready().await.map_err(|error| Status::cancelled(format!("the channel is not ready: {error}")))?;
    let path: http::uri::PathAndQuery = path.parse().expect("a valid URI path");
    if streaming {
        drop(grpc.server_streaming(tonic::Request::new(message), path, RawCodec).await?);
        Ok(String::from("a stream"))
    } else {
        let answer = grpc.unary(tonic::Request::new(message), path, RawCodec).await?;
        Ok(format!("{} bytes", answer.get_ref().len()))
    }
}

// ---- protobuf encoding by hand ----

pub fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint((u64::from(field) << 3) | u64::from(wire_type), out);
}

/// A valid encoding of exactly `bytes` bytes of the empty message: one length-delimited
/// field numbered 1000, which no request has, so a decoder skips it. A body of this size
/// is refused only for its size, never for its content.
pub fn padded_empty(bytes: usize) -> Vec<u8> {
    let mut field = Vec::new();
    key(1000, 2, &mut field);
    for length_bytes in 1..=5 {
        let length = bytes - field.len() - length_bytes;
        let mut message = field.clone();
        varint(length as u64, &mut message);
        if message.len() == field.len() + length_bytes {
            message.resize(bytes, 0x5a);
            return message;
        }
    }
    panic!("no padding of {bytes} bytes");
}
