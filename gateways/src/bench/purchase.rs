//! Case 2: purchases over gRPC against the engine's server in this process, closed loop for
//! the maximum and paced open loops for the latency.

use super::*;
use crate::common::client::{self, DeliveryClient, MerchantClient};
use crate::common::cred::Credential;
use crate::server::{EngineConfig, RunningEngine};
use anyhow::ensure;
use engine::crypto::{self, SecretKey};
use engine::log::EventLog;
use engine::log::jetstream::JetStreamLog;
use proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The engine's gRPC server in this process on [`PURCHASE_STREAM`], with merchants (one
/// channel each), announced delivery nodes and one published media, ready to sell.
pub(super) struct GrpcMarket {
    pub(super) engine: RunningEngine,
    pub(super) merchants: Vec<MerchantClient>,
    /// Each merchant's credential, in the order of `merchants` (case 8 dials a second
    /// engine with them).
    pub(super) merchant_credentials: Vec<Credential>,
    pub(super) media_id: String,
    pub(super) nodes: usize,
    /// Each node's DeliveryService client, with the node's own credential.
    pub(super) node_clients: std::collections::HashMap<String, DeliveryClient>,
    /// One node's credential (the raw gRPC baseline's client presents it, as the nodes do).
    pub(super) node_credential: Credential,
    /// The certified consumer the redemptions are for: (consumer id, certificate serial).
    pub(super) consumer: (String, String),
    /// The certified public key (SPKI DER) the receipt proofs name.
    pub(super) consumer_key_der: Arc<Vec<u8>>,
    pub(super) heartbeat: tokio::task::JoinHandle<()>,
    pub(super) run_id: String,
}

/// A Redeem ready to send: the client of the node the voucher was issued to, and the request.
pub(super) struct PreparedRedeem {
    pub(super) node: DeliveryClient,
    pub(super) request: pb::RedeemRequest,
}

/// A purchase over gRPC kept for a redemption through DeliveryService.
pub(super) struct GrpcToDeliver {
    pub(super) index: usize,
    pub(super) voucher_id: String,
    pub(super) node_id: String,
    pub(super) receipt: SecretKey,
}

impl GrpcMarket {
    /// Starts the server on 127.0.0.1:0 and sets up, over gRPC as the operator, what
    /// `purchases` sales need.
    pub(super) async fn start(url: &str, keys_dir: &Path, data_dir: &Path, purchases: usize, player_public_der: &[u8]) -> anyhow::Result<Self> {
        let log: Arc<dyn EventLog> = Arc::new(JetStreamLog::connect(url, PURCHASE_STREAM).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1 for the bench's gRPC engine")?;
        let engine = crate::server::start(EngineConfig::new(data_dir.to_path_buf(), keys_dir.to_path_buf()), log, listener).await?;
        let engine_url = engine.url();
        let run_id = run_id();
        let operator = Credential::load(&keys_dir.join(crate::common::keys::OPERATOR_CRED))?;
        let operator_channel = client::connect(&engine_url, None).await?;
        let mut catalog = client::catalog(operator_channel.clone(), operator);
        let mut merchants = Vec::with_capacity(PURCHASE_MERCHANTS);
        let mut merchant_credentials = Vec::with_capacity(PURCHASE_MERCHANTS);
        for index in 0..PURCHASE_MERCHANTS {
            let registered = catalog
                .register_merchant(pb::RegisterMerchantRequest { request_id: request(&run_id, "merchant", index).0, name: format!("Bench shop {index}") })
                .await
                .context("the bench's RegisterMerchant was refused")?;
            let credential = client::credential_of(registered.into_inner())?;
            // One channel per merchant: its own HTTP/2 connection, as separate shops have.
            merchants.push(client::merchant(client::connect(&engine_url, None).await?, credential.clone()));
            merchant_credentials.push(credential);
        }
        let slots_max = engine::domain::party::SLOTS_MAX;
        let nodes = purchases / slots_max as usize + 2;
        let mut delivery_nodes = Vec::with_capacity(nodes);
        let mut node_clients = std::collections::HashMap::with_capacity(nodes);
        let mut node_credential = None;
        for index in 0..nodes {
            let registered = catalog
                .register_node_credential(pb::RegisterNodeCredentialRequest { request_id: request(&run_id, "node", index).0, region: "eu".into(), slots_max })
                .await
                .context("the bench's RegisterNodeCredential was refused")?;
            let credential = client::credential_of(registered.into_inner())?;
            let node_id = credential.id.clone();
            node_credential.get_or_insert_with(|| credential.clone());
            let mut delivery = client::delivery(operator_channel.clone(), credential);
            delivery
                .register_node(pb::RegisterNodeRequest { region: "eu".into(), slots_max, endpoint: PURCHASE_NODE_ENDPOINT.into() })
                .await
                .context("the bench's RegisterNode was refused")?;
            node_clients.insert(node_id, delivery.clone());
            delivery_nodes.push(delivery);
        }
        let consumer_id = format!("{run_id}-player");
        let certificate = catalog
            .certify_consumer(pb::CertifyConsumerRequest {
                request_id: request(&run_id, "certify", 0).0,
                consumer_id: consumer_id.clone(),
                public_key_der: player_public_der.to_vec(),
                validity_ms: CERT_VALIDITY_MS,
            })
            .await
            .context("the bench's CertifyConsumer was refused")?
            .into_inner();
        let heartbeat = tokio::spawn(heartbeats(delivery_nodes));
        let engine_public = crate::common::keys::load_engine_public(keys_dir)?;
        let mut content = vec![0u8; MEDIA_BYTES];
        content[..32].copy_from_slice(&crypto::random_bytes::<32>());
        let upload = client::Upload {
            title: "Bench Track".into(),
            artist: "The Baselines".into(),
            authors: vec!["The Baselines".into()],
            length_ms: 180_000,
            price_minor: 199,
            currency: "EUR".into(),
            terms: client::standard_terms("label-1"),
            content,
            preview_clip: vec![0u8; 1024],
            image_descriptor: "cover.jpg".into(),
        };
        let published =
            client::publish(&mut catalog, &request(&run_id, "publish", 0).0, &engine_public, upload).await.context("the bench's PublishMedia failed")?;
        Ok(GrpcMarket {
            engine,
            merchants,
            merchant_credentials,
            media_id: published.media_id,
            nodes,
            node_clients,
            node_credential: node_credential.context("the bench registered no delivery node")?,
            consumer: (consumer_id, certificate.cert_serial),
            consumer_key_der: Arc::new(player_public_der.to_vec()),
            heartbeat,
            run_id,
        })
    }

    /// Buys vouchers `range` over gRPC, each Reserve → Authorize → IssueVoucher in
    /// sequence as merchant `index mod PURCHASE_MERCHANTS`, started as `pace` says: the
    /// rate and latency per purchase (from its scheduled start), the latency per step, and
    /// every purchase, ready for a redemption.
    pub(super) async fn purchase_all(&self, range: std::ops::Range<usize>, pace: Pace) -> anyhow::Result<(Rate, PurchaseSteps, Vec<GrpcToDeliver>)> {
        let count = range.len();
        let started = Instant::now();
        let results = drive_paced(range, pace, |index, scheduled| {
            let mut merchant = self.merchants[index % self.merchants.len()].clone();
            let media_id = self.media_id.clone();
            let run_id = self.run_id.clone();
            async move {
                // Reserve, Authorize, IssueVoucher, and the whole purchase, in microseconds.
                let mut latencies = [0u32; 4];
                let purchase = scheduled;
                let reserve = pb::ReserveRequest {
                    request_id: request(&run_id, "reserve", index).0,
                    media_ids: vec![media_id],
                    rendition: "high".into(),
                    ttl_ms: RESERVATION_TTL_MS,
                    points_account: String::new(),
                    payment_ref: format!("card-{index}"),
                    spend_authorization: None,
                    rental_ms: 0,
                };
                let step = Instant::now();
                let voucher_id = merchant.reserve(reserve).await.with_context(|| format!("Reserve of purchase {index}"))?.into_inner().voucher_id;
                latencies[0] = micros(step.elapsed());
                let step = Instant::now();
                let authorized = merchant
                    .authorize(pb::AuthorizeRequest { request_id: request(&run_id, "authorize", index).0, voucher_id: voucher_id.clone() })
                    .await
                    .with_context(|| format!("Authorize of purchase {index}"))?
                    .into_inner();
                latencies[1] = micros(step.elapsed());
                let step = Instant::now();
                let issued = merchant
                    .issue_voucher(pb::IssueVoucherRequest { request_id: request(&run_id, "issue", index).0, voucher_id, region: String::new() })
                    .await
                    .with_context(|| format!("IssueVoucher of purchase {index}"))?
                    .into_inner();
                latencies[2] = micros(step.elapsed());
                latencies[3] = micros(purchase.elapsed());
                ensure!(
                    !issued.node_id.is_empty() && !issued.access_token.is_empty(),
                    "IssueVoucher of purchase {index} answered without a node or an access token"
                );
                // Every purchase is kept: case 4 redeems every purchase of the maximum.
                let receipt: [u8; crypto::KEY_BYTES] = authorized
                    .receipt
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("Authorize of purchase {index} answered a receipt of {} bytes", authorized.receipt.len()))?;
                let kept = GrpcToDeliver { index, voucher_id: issued.voucher_id, node_id: issued.node_id, receipt: SecretKey::from_bytes(receipt) };
                anyhow::Ok((latencies, kept))
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let (results, kept): (Vec<[u32; 4]>, Vec<GrpcToDeliver>) = results.into_iter().unzip();
        let step = |which: usize| {
            let mut latencies: Vec<u32> = results.iter().map(|purchase| purchase[which]).collect();
            let rate = Rate::new(count as u64, elapsed, &mut latencies);
            (rate.p50_ms.unwrap_or(f64::NAN), rate.p99_ms.unwrap_or(f64::NAN))
        };
        let ((reserve_p50_ms, reserve_p99_ms), (authorize_p50_ms, authorize_p99_ms), (issue_p50_ms, issue_p99_ms)) = (step(0), step(1), step(2));
        let mut latencies: Vec<u32> = results.iter().map(|purchase| purchase[3]).collect();
        let steps = PurchaseSteps { reserve_p50_ms, reserve_p99_ms, authorize_p50_ms, authorize_p99_ms, issue_p50_ms, issue_p99_ms };
        Ok((Rate::new(count as u64, elapsed, &mut latencies), steps, kept))
    }

    /// Each voucher's Redeem as the node it was issued to would send it (that node's
    /// client, with the node's credential, and the player's proof over a fresh challenge),
    /// built before anything is timed, so the timed part holds only the calls.
    pub(super) fn prepare_redemptions(&self, vouchers: &[GrpcToDeliver]) -> anyhow::Result<Vec<PreparedRedeem>> {
        let (consumer_id, cert_serial) = &self.consumer;
        vouchers
            .iter()
            .map(|voucher| {
                let node = self
                    .node_clients
                    .get(&voucher.node_id)
                    .cloned()
                    .with_context(|| format!("voucher {} was issued to node {}, which the bench did not register", voucher.voucher_id, voucher.node_id))?;
                let challenge = crypto::random_bytes::<32>();
                let proof = crypto::receipt_proof(
                    &voucher.receipt,
                    &voucher.voucher_id,
                    &voucher.node_id,
                    &challenge,
                    &crypto::ProofConsumer::new(consumer_id, cert_serial, &self.consumer_key_der),
                );
                let request = pb::RedeemRequest {
                    request_id: request(&self.run_id, "redeem", voucher.index).0,
                    voucher_id: voucher.voucher_id.clone(),
                    cert_serial: cert_serial.clone(),
                    consumer_id: consumer_id.clone(),
                    challenge: challenge.to_vec(),
                    proof: proof.to_vec(),
                    recover: false,
                };
                Ok(PreparedRedeem { node, request })
            })
            .collect()
    }

    /// Sends every prepared Redeem through DeliveryService over gRPC, `VOUCHERS_IN_FLIGHT`
    /// at once: each answer carries the media key re-wrapped for the consumer (RSA-OAEP)
    /// and the signed transaction record. The rate, and one answer (the raw gRPC baseline
    /// answers its bytes).
    pub(super) async fn redeem_all(&self, prepared: Vec<PreparedRedeem>) -> anyhow::Result<(Rate, pb::RedeemResponse)> {
        let count = prepared.len();
        let prepared = Arc::new(prepared);
        let started = Instant::now();
        let answers = drive(0..count, |position| {
            let prepared = Arc::clone(&prepared);
            async move {
                let PreparedRedeem { node, request } = &prepared[position];
                let voucher_id = request.voucher_id.clone();
                let step = Instant::now();
                let redeemed = node.clone().redeem(request.clone()).await.with_context(|| format!("Redeem of voucher {voucher_id}"))?.into_inner();
                let latency = micros(step.elapsed());
                ensure!(
                    redeemed.keys.len() == 1 && redeemed.keys.iter().all(|key| !key.wrapped_key.is_empty() && !key.transaction_signature.is_empty()),
                    "Redeem of voucher {voucher_id} answered without a wrapped key and a signed transaction"
                );
                // One answer is kept: its bytes are what the raw baseline answers.
                anyhow::Ok((latency, (position == 0).then_some(redeemed)))
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let (mut latencies, kept): (Vec<u32>, Vec<Option<pb::RedeemResponse>>) = answers.into_iter().unzip();
        let sample = kept.into_iter().flatten().next().context("no redemption to time")?;
        Ok((Rate::new(count as u64, elapsed, &mut latencies), sample))
    }

    /// Waits until the engine's projections applied every event stored so far.
    pub(super) async fn caught_up(&self) -> anyhow::Result<()> {
        let state = &self.engine.state;
        state.live.caught_up(state.log.last_seq().await?).await;
        Ok(())
    }

    /// Stops the heartbeats, closes the merchants' channels and shuts the server down.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.heartbeat.abort();
        drop(self.merchants);
        self.engine.shutdown().await
    }
}

/// Keeps the bench's nodes healthy for the allocator, as a node agent does: a heartbeat
/// from each every `node::HEARTBEAT_INTERVAL_MS`, until the task is aborted.
pub(super) async fn heartbeats(mut nodes: Vec<DeliveryClient>) {
    let mut tick = tokio::time::interval(Duration::from_millis(crate::node::HEARTBEAT_INTERVAL_MS));
    // The first tick is immediate, and RegisterNode just counted as a heartbeat.
    tick.tick().await;
    loop {
        tick.tick().await;
        for node in &mut nodes {
            if let Err(status) = node.heartbeat(pb::HeartbeatRequest::default()).await {
                tracing::warn!(code = ?status.code(), "a bench node's heartbeat was refused; the allocator may stop choosing it");
            }
        }
    }
}

/// Runs `make(index)` for every index as its own task, `VOUCHERS_IN_FLIGHT` at once, and
/// returns the results in completion order; the first error stops the run.
pub(super) async fn drive<T, F, Fut>(range: std::ops::Range<usize>, mut make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut results = Vec::with_capacity(range.len());
    let mut tasks = tokio::task::JoinSet::new();
    for index in range {
        if tasks.len() >= VOUCHERS_IN_FLIGHT
            && let Some(joined) = tasks.join_next().await
        {
            results.push(joined.context("a bench task panicked")??);
        }
        tasks.spawn(make(index));
    }
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("a bench task panicked")??);
    }
    Ok(results)
}

/// How case 2 starts its purchases.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pace {
    /// The next one as soon as one of [`VOUCHERS_IN_FLIGHT`] ends: the most the engine
    /// sustains, with the latency that depth implies.
    Closed,
    /// On a fixed schedule, `per_s` a second, whatever the answers (an open loop, as wrk2
    /// measures): a slow answer does not delay later starts, and each latency counts from
    /// the scheduled start, so no queueing is hidden.
    Open { per_s: f64 },
}

/// [`drive`] for case 2: `make(index, scheduled)` gets the instant its purchase was due.
pub(super) async fn drive_paced<T, F, Fut>(range: std::ops::Range<usize>, pace: Pace, mut make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: FnMut(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let per_s = match pace {
        Pace::Closed => return drive(range, |index| make(index, Instant::now())).await,
        Pace::Open { per_s } => per_s.max(1.0),
    };
    let mut results = Vec::with_capacity(range.len());
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (position, index) in range.enumerate() {
        let scheduled = started + Duration::from_secs_f64(position as f64 / per_s);
        tokio::time::sleep_until(scheduled.into()).await;
        while let Some(joined) = tasks.try_join_next() {
            results.push(joined.context("a bench task panicked")??);
        }
        if tasks.len() >= PURCHASES_OPEN_IN_FLIGHT_MAX
            && let Some(joined) = tasks.join_next().await
        {
            results.push(joined.context("a bench task panicked")??);
        }
        tasks.spawn(make(index, scheduled));
    }
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.context("a bench task panicked")??);
    }
    Ok(results)
}

/// The auditor's replay of the bench stream, timed; it must be clean and count `expected`
/// events.
pub(super) async fn audit_replay(url: &str, keys: &BenchKeys, expected: u64) -> anyhow::Result<(Rate, projections::audit::AuditReport)> {
    let log = JetStreamLog::connect(url, BENCH_STREAM).await?;
    let started = Instant::now();
    let report = projections::audit::replay(&log, &keys.royalty_master, &keys.engine.public, None, |_| {}).await?;
    let elapsed = started.elapsed();
    if !report.ok() {
        eprintln!("{}", crate::audit::describe(&report));
    }
    ensure!(report.events == expected, "the audit replay read {} events, the stream holds {expected}", report.events);
    Ok((Rate::new(report.events, elapsed, &mut []), report))
}
