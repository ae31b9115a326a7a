//! Case 4 against its own substrate (issue 26 item 2): the CPU one redemption over gRPC
//! costs (`redeem_cpu_us`) next to the same run's raw cost of what a redemption cannot
//! avoid (`raw_redeem_cpu_us`), and `redeem_ratio` = raw ÷ engine.
//!
//! **Engine side.** Every purchase of case 2's maximum is redeemed through
//! DeliveryService over gRPC as the node it was issued to, [`VOUCHERS_IN_FLIGHT`] at once
//! on one channel (after an untimed warm-up of case 2's warm-up purchases). The requests
//! (challenge, the player's proof) are built before the first mark, so the load generator's
//! share of the timed CPU is its side of the gRPC calls. CPU is this process's (the engine,
//! its jobs and projections, and the gRPC client: one tokio runtime, so their threads
//! cannot be told apart) plus the nats-server's, from /proc/<pid>/stat, from just before
//! the first Redeem until the projections applied the last one's event, divided by the
//! redemptions.
//!
//! **Raw side**, each part timed on its own in the same run, process + nats-server CPU per
//! operation from the same counters:
//! - **OAEP**: one RSA-OAEP-SHA256 encryption of a 32-byte key with the implementation the
//!   engine uses (aws-lc-rs through `engine::crypto::wrap_key`), from case 4's raw OAEP run,
//!   times the keys a redemption wraps (counted in an answer);
//! - **appends**: the redemption's events published raw to the same nats-server's raw
//!   stream, each on a subject of its own with `Nats-Msg-Id` and an expected last subject
//!   sequence (the engine's headers) and a payload of the engine's mean size; the events and
//!   their size are counted on the engine's stream (those its Redeem commands appended over
//!   the timed part), so the raw side publishes what the engine did, per redemption;
//! - **gRPC**: one unary round trip of the same Redeem requests, through the same client
//!   (`client::delivery`, the node's credential, one channel, as many in flight), to a
//!   minimal tonic service in this process that decodes the request and answers the bytes
//!   of one of the engine's own answers; both ends of the call are in this process, as on
//!   the engine side;
//! - **signature**: `engine::media::sign_transaction_batch` (RSA-PSS over the Merkle root,
//!   the engine's code) over [`RAW_BATCH_RECORDS`] records the size of the engine's,
//!   divided by that many: the most redemptions that can wait for one signature at once is
//!   the number in flight, so that is the smallest share a redemption can pay.
//!
//! What the raw side leaves out, because a redemption can avoid it: the voucher's read
//! from the log when it left the aggregate cache, the front door, the projections' work, the
//! certificate and proof checks (an HMAC), the decision, gathering for the batch.

use super::*;
use crate::common::client;
use crate::common::cred::Credential;
use engine::log::EventLog;
use engine::media::TRANSACTION_BATCH_MAX;
use proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

/// The target of issue 26: `redeem_ratio` at least this.
pub const REDEEM_RATIO_TARGET: f64 = 0.5;
/// Records sharing the raw batch signature: the redemptions in flight at once.
pub const RAW_BATCH_RECORDS: usize = if VOUCHERS_IN_FLIGHT < TRANSACTION_BATCH_MAX { VOUCHERS_IN_FLIGHT } else { TRANSACTION_BATCH_MAX };
/// Raw gRPC round trips timed, at least: CPU is read in 10 ms clock ticks, and fewer
/// operations would leave the figure a handful of ticks.
const RAW_GRPC_ROUND_TRIPS_MIN: usize = 10_000;
/// Raw publishes of redemption events timed, at least (the same reason).
const RAW_REDEEM_APPENDS_MIN: usize = 20_000;
/// Events read per request when counting what the redemptions appended.
const COUNT_READ_EVENTS: usize = 4_096;
/// DeliveryService's Redeem, the one path the raw service answers.
const RAW_REDEEM_PATH: &str = "/vouchsafe.v1.DeliveryService/Redeem";

/// The raw cost of one redemption, part by part (module docs). CPU figures are process +
/// nats-server microseconds per operation, null when the nats-server's CPU is not known
/// (`--nats-url`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RedeemSubstrate {
    /// One RSA-OAEP-SHA256 encryption with aws-lc-rs (the engine's implementation).
    pub oaep_cpu_us: Option<f64>,
    /// Keys wrapped per redemption (one per media bought).
    pub keys_per_redemption: f64,
    /// One raw publish of a redemption's event.
    pub append_cpu_us: Option<f64>,
    /// Events the engine's Redeem commands appended, per timed redemption.
    pub appends_per_redemption: f64,
    /// Their mean payload, the raw publishes' payload size.
    pub append_payload_bytes: usize,
    /// One unary round trip to the minimal tonic service.
    pub grpc_cpu_us: Option<f64>,
    /// Encoded sizes of the request and of the answer the raw service sends back.
    pub grpc_request_bytes: usize,
    pub grpc_response_bytes: usize,
    /// One batch signature over `batch_records` records.
    pub batch_signature_cpu_us: Option<f64>,
    pub batch_records: usize,
    /// The timed raw runs behind the figures above.
    pub raw_appends: Rate,
    pub raw_grpc: Rate,
    pub raw_batch_signature: Rate,
}

impl RedeemSubstrate {
    /// Each part of one redemption's raw cost, in microseconds: OAEP times the keys, the
    /// appends, the round trip, the share of one batch signature.
    pub fn parts(&self) -> [(&'static str, Option<f64>); 4] {
        let records = self.batch_records.max(1) as f64;
        [
            ("oaep", self.oaep_cpu_us.map(|us| us * self.keys_per_redemption)),
            ("appends", self.append_cpu_us.map(|us| us * self.appends_per_redemption)),
            ("grpc", self.grpc_cpu_us),
            ("signature share", self.batch_signature_cpu_us.map(|us| us / records)),
        ]
    }

    /// `raw_redeem_cpu_us`: the parts summed, when every one is known.
    pub fn per_redemption_cpu_us(&self) -> Option<f64> {
        self.parts().iter().map(|(_, us)| *us).sum()
    }
}

/// Process + nats-server CPU per operation of `rate`, when both are known.
pub(super) fn cpu_in_all(rate: &Rate) -> Option<f64> {
    Some(rate.client_cpu_us? + rate.server_cpu_us?)
}

/// `redeem_ratio`: the raw CPU per redemption over the engine's; NaN (null in JSON) when
/// either is unknown or not positive.
pub fn redeem_ratio(raw_us: Option<f64>, engine_us: Option<f64>) -> f64 {
    match (raw_us, engine_us) {
        (Some(raw), Some(engine)) if raw > 0.0 && engine > 0.0 => raw / engine,
        _ => f64::NAN,
    }
}

/// Case 4 as measured: the engine's redemptions and the raw parts.
pub(super) struct RedeemMeasured {
    pub(super) redeem: Rate,
    pub(super) substrate: RedeemSubstrate,
}

/// Runs case 4 on `market` (case 2's engine, which it leaves running): the warm-up and
/// timed redemptions, then the raw parts (module docs). `raw_rsa_oaep` is this run's raw
/// OAEP measurement, with its CPU.
#[allow(clippy::too_many_arguments)] // the case's inputs, each from an earlier case
pub(super) async fn redeem_case(
    market: &GrpcMarket,
    warmup: &[GrpcToDeliver],
    timed: &[GrpcToDeliver],
    raw: &RawClient,
    keys: &BenchKeys,
    raw_rsa_oaep: &Rate,
    plan: &Plan,
    meter: CpuMeter,
) -> anyhow::Result<RedeemMeasured> {
    market.redeem_all(market.prepare_redemptions(warmup)?).await?;
    market.caught_up().await?;
    let prepared = market.prepare_redemptions(timed)?;
    let requests: Vec<pb::RedeemRequest> = prepared.iter().map(|redeem| redeem.request.clone()).collect();
    let log = Arc::clone(&market.engine.state.log);
    let before = log.last_seq().await?;
    let mark = meter.mark();
    let (redeem, answer) = market.redeem_all(prepared).await?;
    // As in cases 1 and 2, the projections' work on these events counts in the CPU.
    market.caught_up().await?;
    let redeem = mark.attach(redeem);
    let after = log.last_seq().await?;
    let (events, event_bytes) = redeem_appends(log.as_ref(), before, after).await?;
    let redemptions = timed.len().max(1) as f64;
    eprintln!(
        "    {:.0} redemptions/s (p50 {} ms, p99 {} ms), {} CPU us per redemption (process + nats-server); {:.2} events appended per redemption",
        redeem.per_s,
        ms(redeem.p50_ms),
        ms(redeem.p99_ms),
        report::cpu(&redeem),
        events as f64 / redemptions
    );

    eprintln!("[4] raw: what a redemption cannot avoid, each part timed alone");
    let append_payload_bytes = event_bytes.checked_div(events).map_or(RAW_PAYLOAD_BYTES, |bytes| bytes as usize);
    let appends = ((events as f64 / redemptions).ceil() as usize * timed.len()).max(RAW_REDEEM_APPENDS_MIN);
    let raw_appends = raw.single_appends(appends, append_payload_bytes, plan.warmup_vouchers, meter).await?;
    eprintln!("    appends: {:.0} publishes/s of {append_payload_bytes} B, {} CPU us each", raw_appends.per_s, report::cpu(&raw_appends));
    let grpc_request_bytes = requests.first().map_or(0, prost::Message::encoded_len);
    let grpc_response_bytes = prost::Message::encoded_len(&answer);
    let keys_per_redemption = answer.keys.len() as f64;
    let record = answer.keys.first().and_then(|key| key.transaction.as_ref()).cloned();
    let round_trips = timed.len().max(RAW_GRPC_ROUND_TRIPS_MIN);
    let raw_grpc = raw_grpc_round_trips(requests, answer, market.node_credential.clone(), round_trips, meter).await?;
    eprintln!(
        "    gRPC: {:.0} unary round trips/s ({grpc_request_bytes} B request, {grpc_response_bytes} B answer), {} CPU us each",
        raw_grpc.per_s,
        report::cpu(&raw_grpc)
    );
    let record = crate::player::transaction_from_proto(record.as_ref()).map_err(|error| anyhow::anyhow!("the sample answer: {error}"))?;
    let messages = vec![record.message(); RAW_BATCH_RECORDS];
    let private = keys.engine.private.clone();
    let measure_ms = plan.rsa_measure_ms;
    let mark = meter.mark();
    let raw_batch_signature = tokio::task::spawn_blocking(move || {
        time_threads(1, measure_ms, || engine::media::sign_transaction_batch(&private, &messages).map_err(|e| anyhow::anyhow!("batch signature: {e}")))
    })
    .await
    .context("the batch signature baseline panicked")??;
    let raw_batch_signature = mark.attach(raw_batch_signature);
    eprintln!("    batch signature over {RAW_BATCH_RECORDS} records: {:.0}/s, {} CPU us each", raw_batch_signature.per_s, report::cpu(&raw_batch_signature));
    let substrate = RedeemSubstrate {
        oaep_cpu_us: cpu_in_all(raw_rsa_oaep),
        keys_per_redemption,
        append_cpu_us: cpu_in_all(&raw_appends),
        appends_per_redemption: events as f64 / redemptions,
        append_payload_bytes,
        grpc_cpu_us: cpu_in_all(&raw_grpc),
        grpc_request_bytes,
        grpc_response_bytes,
        batch_signature_cpu_us: cpu_in_all(&raw_batch_signature),
        batch_records: RAW_BATCH_RECORDS,
        raw_appends,
        raw_grpc,
        raw_batch_signature,
    };
    Ok(RedeemMeasured { redeem, substrate })
}

/// The events appended by Redeem commands in `(before, after]` of the engine's stream: how
/// many, and their payload bytes in all.
async fn redeem_appends(log: &dyn EventLog, before: engine::ids::Seq, after: engine::ids::Seq) -> anyhow::Result<(u64, u64)> {
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut next = before.0 + 1;
    while next <= after.0 {
        let read = log.read_from(engine::ids::Seq(next), COUNT_READ_EVENTS).await?;
        let Some(last) = read.last() else { break };
        next = last.seq.0 + 1;
        for stored in read.iter().filter(|stored| stored.seq <= after) {
            let recorded = engine::wire::decode(&stored.payload).with_context(|| format!("event {} of the engine's stream does not decode", stored.seq.0))?;
            if recorded.command == "Redeem" {
                events += 1;
                bytes += stored.payload.len() as u64;
            }
        }
    }
    Ok((events, bytes))
}

/// `round_trips` Redeem calls (the `requests` in turn) through `client::delivery` with
/// `credential`, one channel, [`VOUCHERS_IN_FLIGHT`] at once, to [`RawRedeemService`]
/// answering `answer`, after an untimed tenth; the rate with its CPU.
pub(super) async fn raw_grpc_round_trips(
    requests: Vec<pb::RedeemRequest>,
    answer: pb::RedeemResponse,
    credential: Credential,
    round_trips: usize,
    meter: CpuMeter,
) -> anyhow::Result<Rate> {
    anyhow::ensure!(!requests.is_empty(), "no request to send to the raw gRPC service");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1 for the raw gRPC service")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(RawRedeemService { answer: Arc::new(answer) }).serve_with_incoming_shutdown(
        nodelay(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let node = client::delivery(client::connect(&url, None).await?, credential);
    let requests = Arc::new(requests);
    let call = |range: std::ops::Range<usize>| {
        let (node, requests) = (node.clone(), Arc::clone(&requests));
        drive(range, move |index| {
            let (mut node, request) = (node.clone(), requests[index % requests.len()].clone());
            async move {
                let step = Instant::now();
                let answer = node.redeem(request).await.context("a raw gRPC round trip")?.into_inner();
                ensure_answered(&answer)?;
                anyhow::Ok(micros(step.elapsed()))
            }
        })
    };
    let warmup = (round_trips / WARMUP_SHARE).max(1);
    call(0..warmup).await?;
    let mark = meter.mark();
    let started = Instant::now();
    let mut latencies = call(warmup..warmup + round_trips).await?;
    let rate = mark.attach(Rate::new(round_trips as u64, started.elapsed(), &mut latencies));
    drop(node);
    let _ = stop.send(());
    server.await.context("the raw gRPC service panicked")?.context("the raw gRPC service failed")?;
    Ok(rate)
}

fn ensure_answered(answer: &pb::RedeemResponse) -> anyhow::Result<()> {
    anyhow::ensure!(answer.keys.len() == 1 && !answer.keys[0].wrapped_key.is_empty(), "the raw gRPC service answered without the key");
    Ok(())
}

/// Accepted connections with TCP_NODELAY (tonic's `serve_with_incoming` ignores the
/// builder's), as the engine's server sets it (`common::peers::incoming`).
fn nodelay(listener: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

/// A minimal tonic service: decodes each call on DeliveryService's Redeem path as a
/// `RedeemRequest` and answers one fixed `RedeemResponse`. No front door, no credential
/// check, no engine: what any unary gRPC call of these sizes costs.
#[derive(Clone)]
struct RawRedeemService {
    answer: Arc<pb::RedeemResponse>,
}

impl tonic::server::NamedService for RawRedeemService {
    const NAME: &'static str = "vouchsafe.v1.DeliveryService";
}

type Answered = Result<http::Response<tonic::body::Body>, std::convert::Infallible>;

impl tower_service::Service<http::Request<tonic::body::Body>> for RawRedeemService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Answered> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = Arc::clone(&self.answer);
        Box::pin(async move {
            if request.uri().path() != RAW_REDEEM_PATH {
                // As tonic's generated servers answer a method they do not have.
                let mut response = http::Response::new(tonic::body::Body::default());
                response.headers_mut().insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                response.headers_mut().insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                return Ok(response);
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<pb::RedeemResponse, pb::RedeemRequest>::default());
            Ok(grpc.unary(Canned(answer), request).await)
        })
    }
}

/// The one unary method: the request decoded, the fixed answer encoded.
struct Canned(Arc<pb::RedeemResponse>);

impl tonic::server::UnaryService<pb::RedeemRequest> for Canned {
    type Response = pb::RedeemResponse;
    type Future = std::future::Ready<Result<tonic::Response<pb::RedeemResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::RedeemRequest>) -> Self::Future {
        std::hint::black_box(request.get_ref());
        std::future::ready(Ok(tonic::Response::new(pb::RedeemResponse::clone(&self.0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn substrate() -> RedeemSubstrate {
        RedeemSubstrate {
            oaep_cpu_us: Some(30.0),
            keys_per_redemption: 2.0,
            append_cpu_us: Some(20.0),
            appends_per_redemption: 1.5,
            grpc_cpu_us: Some(50.0),
            batch_signature_cpu_us: Some(1280.0),
            batch_records: 256,
            ..RedeemSubstrate::default()
        }
    }

    #[test]
    fn the_raw_cost_of_a_redemption_sums_its_parts() {
        let raw = substrate();
        // 2 keys × 30 + 1.5 appends × 20 + 50 + 1280 / 256.
        assert_eq!(raw.per_redemption_cpu_us(), Some(60.0 + 30.0 + 50.0 + 5.0));
        let parts: Vec<f64> = raw.parts().iter().map(|(_, us)| us.expect("known")).collect();
        assert_eq!(parts, vec![60.0, 30.0, 50.0, 5.0]);
    }

    #[test]
    fn an_unknown_part_leaves_the_raw_cost_unknown() {
        let raw = RedeemSubstrate { append_cpu_us: None, ..substrate() };
        assert_eq!(raw.per_redemption_cpu_us(), None);
        assert!(redeem_ratio(raw.per_redemption_cpu_us(), Some(300.0)).is_nan());
    }

    #[test]
    fn the_ratio_is_raw_over_engine() {
        assert_eq!(redeem_ratio(Some(145.0), Some(290.0)), 0.5);
        assert!(redeem_ratio(Some(145.0), None).is_nan());
        assert!(redeem_ratio(Some(145.0), Some(0.0)).is_nan());
    }

    #[test]
    fn cpu_in_all_is_process_plus_server() {
        let rate = Rate { client_cpu_us: Some(12.5), server_cpu_us: Some(7.5), ..Rate::default() };
        assert_eq!(cpu_in_all(&rate), Some(20.0));
        assert_eq!(cpu_in_all(&Rate { server_cpu_us: None, ..rate }), None);
    }

    /// The raw service answers Redeem with its fixed answer through the same client the
    /// engine case uses, and counts every timed round trip.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_raw_grpc_service_answers_redeem_with_its_fixed_answer() {
        let answer = pb::RedeemResponse {
            voucher_id: "v1".into(),
            keys: vec![pb::WrappedKey { media_id: "m1".into(), wrapped_key: vec![7; 256], transaction: None, transaction_signature: vec![9; 300] }],
        };
        let request = pb::RedeemRequest { request_id: "r1".into(), voucher_id: "v1".into(), challenge: vec![1; 32], proof: vec![2; 32], ..Default::default() };
        let credential = Credential::new("node-1", engine::crypto::SecretKey::from_bytes([3; 32]));
        let meter = CpuMeter { server_pid: None };
        let rate = raw_grpc_round_trips(vec![request], answer, credential, 50, meter).await.expect("round trips");
        assert_eq!(rate.operations, 50);
        assert!(rate.client_cpu_us.is_some() && rate.server_cpu_us.is_none(), "{rate:?}");
    }
}
