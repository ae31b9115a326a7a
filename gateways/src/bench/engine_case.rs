//! The engine in process (cases 1, 3, 4, 5): `Market` on `JetStreamLog` with live
//! projections as the allocator, the keys every case uses, and the audit replay.

use super::*;
use anyhow::ensure;
use engine::app::{EngineKeys, Market, PublishInput};
use engine::clock::{Clock, SystemClock};
use engine::crypto::{self, SecretKey};
use engine::domain::event::{Payment, PreviewClip, Rendition, RoyaltyTerms};
use engine::ids::{CertSerial, ConsumerId, MediaId, MerchantId, NodeId, VoucherId};
use engine::log::EventLog;
use engine::log::jetstream::JetStreamLog;
use projections::Live;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The key material every engine case uses: `keys init` output plus a player's key.
pub(super) struct BenchKeys {
    pub(super) engine: Arc<EngineKeys>,
    pub(super) royalty_master: SecretKey,
    pub(super) operator: String,
    pub(super) player_public_der: Vec<u8>,
}

impl BenchKeys {
    pub(super) fn load(dir: &Path) -> anyhow::Result<Self> {
        let engine = Arc::new(EngineKeys::new(crate::common::keys::load_engine_private(dir)?)?);
        // A consumer's certified key; the engine re-wraps media keys for it at redemption.
        // Only its public half matters here, and any 2048-bit key costs the same, so the
        // engine's own modulus stands in (no second key generation).
        let player_public_der = engine.public.to_der()?;
        Ok(BenchKeys {
            engine,
            royalty_master: crate::common::keys::load_royalty_master(dir)?,
            operator: crate::common::keys::load_operator_id(dir)?,
            player_public_der,
        })
    }
}

/// One voucher to redeem and deliver: what the merchant handed the player.
pub(super) struct ToDeliver {
    pub(super) index: usize,
    pub(super) voucher_id: VoucherId,
    pub(super) node_id: NodeId,
    pub(super) receipt: crypto::Token,
}

/// A running engine: Market on a JetStreamLog, Live following it as the allocator.
pub(super) struct EngineUnderTest {
    pub(super) market: Arc<Market>,
    pub(super) live: Live,
    pub(super) log: Arc<dyn EventLog>,
    pub(super) jetstream: Arc<JetStreamLog>,
    pub(super) runner: tokio::task::JoinHandle<Result<(), projections::RunError>>,
    pub(super) merchants: Vec<MerchantId>,
    pub(super) media_id: MediaId,
    pub(super) content_hash: [u8; 32],
    pub(super) consumer: ConsumerId,
    pub(super) cert_serial: CertSerial,
    /// The certified public key (SPKI DER) the receipt proofs name.
    pub(super) consumer_key_der: Arc<Vec<u8>>,
    pub(super) run_id: String,
}

impl EngineUnderTest {
    /// Connects, starts the projections and registers what the workload needs: merchants,
    /// enough delivery nodes for `vouchers` issued at once, one media, one consumer.
    pub(super) async fn start(url: &str, keys: &BenchKeys, vouchers: usize) -> anyhow::Result<Self> {
        Self::start_with(url, keys, vouchers, false, None).await
    }

    /// `start`, with group commit (`StreamOptions::group_commit`) on or off, and the live
    /// projections in memory or, as `serve` keeps them, in a projection store at
    /// `projection_dir`.
    pub(super) async fn start_with(url: &str, keys: &BenchKeys, vouchers: usize, group_commit: bool, projection_dir: Option<&Path>) -> anyhow::Result<Self> {
        let options = engine::log::jetstream::StreamOptions { group_commit, ..Default::default() };
        let jetstream = Arc::new(JetStreamLog::connect_with(url, BENCH_STREAM, options).await?);
        let log: Arc<dyn EventLog> = Arc::clone(&jetstream) as Arc<dyn EventLog>;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let live = match projection_dir {
            None => Live::with_keys(Some(&keys.royalty_master), Some(keys.engine.public.clone())),
            Some(dir) => Live::open_checked(dir, Some(&keys.royalty_master), Some(keys.engine.public.clone()), log.as_ref()).await?.0,
        };
        let runner = {
            let (live, log) = (live.clone(), Arc::clone(&log));
            tokio::spawn(async move { live.run(log).await })
        };
        let market = Arc::new(Market::new(Arc::clone(&log), clock, Arc::clone(&keys.engine), Arc::new(live.clone())));
        let run_id = run_id();
        let operator = keys.operator.as_str();
        let mut merchants = Vec::with_capacity(MERCHANTS);
        for index in 0..MERCHANTS {
            let credential = market.register_merchant(operator, &request(&run_id, "merchant", index), &format!("Bench shop {index}")).await?;
            merchants.push(MerchantId(credential.id));
        }
        let slots = engine::domain::party::SLOTS_MAX;
        let nodes = vouchers / slots as usize + 2;
        for index in 0..nodes {
            market.register_node(operator, &request(&run_id, "node", index), "eu", slots).await?;
        }
        let mut content = vec![0u8; MEDIA_BYTES];
        content[..32].copy_from_slice(&crypto::random_bytes::<32>());
        let content_hash = crypto::hash(&content);
        let wrapped_media_key = crypto::wrap_key(&keys.engine.public, &SecretKey::random())?;
        let input = PublishInput {
            title: "Bench Track".into(),
            artist: "The Baselines".into(),
            authors: vec!["The Baselines".into()],
            length_ms: 180_000,
            price_minor: 199,
            currency: "EUR".into(),
            terms: RoyaltyTerms {
                retailer_bps: 3000,
                distributor_bps: 2000,
                owner_bps: 5000,
                distributor: "dist-1".into(),
                owner: "label-1".into(),
                rights_agent: "agent-1".into(),
            },
            renditions: vec![Rendition { name: "high".into(), bitrate_kbps: 256, content_hash, size_bytes: MEDIA_BYTES as u64 }],
            preview: PreviewClip { start_ms: 30_000, duration_ms: 30_000 },
            image_descriptor: "cover.jpg".into(),
            for_sale: true,
            wrapped_media_key,
        };
        let media_id = market.publish_media("bench-publisher", &request(&run_id, "publish", 0), input).await?;
        let consumer = ConsumerId(format!("{run_id}-player"));
        let cert = market.certify_consumer(operator, &request(&run_id, "certify", 0), &consumer, &keys.player_public_der, CERT_VALIDITY_MS).await?;
        // The allocator chooses among the nodes the projections have applied: wait for the
        // set-up (on a busy machine the first sales could otherwise find no node at all).
        live.caught_up(log.last_seq().await?).await;
        Ok(EngineUnderTest {
            market,
            live,
            log,
            jetstream,
            runner,
            merchants,
            media_id,
            content_hash,
            consumer,
            cert_serial: cert.serial,
            consumer_key_der: Arc::new(keys.player_public_der.clone()),
            run_id,
        })
    }

    /// Sells vouchers `range` (Reserve → Authorize → IssueVoucher each), one task per
    /// voucher, `VOUCHERS_IN_FLIGHT` at once; keeps one in `deliver_one_in` for delivery.
    pub(super) async fn sell(&self, range: std::ops::Range<usize>, deliver_one_in: Option<usize>) -> anyhow::Result<(Rate, Vec<ToDeliver>)> {
        let count = range.len();
        let started = Instant::now();
        let results = drive(range, |index| {
            let market = Arc::clone(&self.market);
            let merchant = self.merchants[index % self.merchants.len()].clone();
            let media_id = self.media_id.clone();
            let run_id = self.run_id.clone();
            let keep = deliver_one_in.is_some_and(|every| index % every == 0);
            async move {
                let mut latencies = [0u32; 3];
                let step = Instant::now();
                let reserved = market
                    .reserve(
                        &merchant,
                        &request(&run_id, "reserve", index),
                        std::slice::from_ref(&media_id),
                        "high",
                        RESERVATION_TTL_MS,
                        Payment::Merchant { payment_ref: format!("card-{index}") },
                        None,
                    )
                    .await?;
                latencies[0] = micros(step.elapsed());
                let step = Instant::now();
                let authorized = market.authorize(&merchant, &request(&run_id, "authorize", index), &reserved.voucher_id).await?;
                latencies[1] = micros(step.elapsed());
                let step = Instant::now();
                let issued = market.issue(&merchant, &request(&run_id, "issue", index), &reserved.voucher_id, None, ACCESS_TTL_MS).await?;
                latencies[2] = micros(step.elapsed());
                let kept = keep.then(|| ToDeliver { index, voucher_id: issued.voucher_id, node_id: issued.node_id, receipt: authorized.receipt });
                anyhow::Ok((latencies, kept))
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let mut latencies = Vec::with_capacity(count * 3);
        let mut to_deliver = Vec::new();
        for (sale, kept) in results {
            latencies.extend_from_slice(&sale);
            to_deliver.extend(kept);
        }
        Ok((Rate::new(3 * count as u64, elapsed, &mut latencies), to_deliver))
    }

    /// Redeems every voucher in `to_deliver` (the timed part: the first tenth is a
    /// warm-up), then reports each delivery complete, so the royalty log gets an entry per
    /// voucher.
    pub(super) async fn redeem_and_deliver(&self, mut to_deliver: Vec<ToDeliver>, meter: CpuMeter) -> anyhow::Result<Rate> {
        let timed = to_deliver.split_off((to_deliver.len() / WARMUP_SHARE).min(to_deliver.len()));
        let warmup = to_deliver;
        let mut delivered = self.redeem_all(warmup).await?.1;
        let mark = meter.mark();
        let started = Instant::now();
        let (mut latencies, redeemed) = self.redeem_all(timed).await?;
        let rate = mark.attach(Rate::new(redeemed.len() as u64, started.elapsed(), &mut latencies));
        delivered.extend(redeemed);
        drive(0..delivered.len(), |position| {
            let market = Arc::clone(&self.market);
            let (index, voucher_id, node_id, confirm_proof) = delivered[position].clone();
            let (media_id, content_hash, run_id) = (self.media_id.clone(), self.content_hash, self.run_id.clone());
            async move {
                let request = request(&run_id, "deliver", index);
                market.complete_delivery(&node_id, &request, &voucher_id, &media_id, content_hash, MEDIA_BYTES as u64, &confirm_proof).await?;
                anyhow::Ok(())
            }
        })
        .await?;
        Ok(rate)
    }

    /// Redeems each voucher; answers the latencies and, per voucher, what its delivery
    /// report needs (the player's confirm proof of the media's content hash).
    pub(super) async fn redeem_all(&self, vouchers: Vec<ToDeliver>) -> anyhow::Result<(Vec<u32>, Vec<(usize, VoucherId, NodeId, [u8; 32])>)> {
        let vouchers: Vec<Arc<ToDeliver>> = vouchers.into_iter().map(Arc::new).collect();
        let results = drive(0..vouchers.len(), |position| {
            let market = Arc::clone(&self.market);
            let voucher = Arc::clone(&vouchers[position]);
            let (consumer, cert_serial, run_id) = (self.consumer.clone(), self.cert_serial.clone(), self.run_id.clone());
            let (media_id, content_hash) = (self.media_id.clone(), self.content_hash);
            let consumer_key_der = Arc::clone(&self.consumer_key_der);
            async move {
                let challenge = crypto::random_bytes::<32>();
                let subject = crypto::ProofConsumer::new(&consumer.0, &cert_serial.0, &consumer_key_der);
                let proof = crypto::receipt_proof(&voucher.receipt, &voucher.voucher_id.0, &voucher.node_id.0, &challenge, &subject);
                let confirm = crypto::confirm_proof(&voucher.receipt, &voucher.voucher_id.0, &voucher.node_id.0, &media_id.0, &content_hash, &subject);
                let started = Instant::now();
                let redeemed = market
                    .redeem(&voucher.node_id, &request(&run_id, "redeem", voucher.index), &voucher.voucher_id, &consumer, &cert_serial, &challenge, &proof)
                    .await?;
                let latency = micros(started.elapsed());
                ensure!(redeemed.keys.len() == 1, "redeeming {} returned {} keys instead of 1", voucher.voucher_id, redeemed.keys.len());
                anyhow::Ok((latency, (voucher.index, voucher.voucher_id.clone(), voucher.node_id.clone(), confirm)))
            }
        })
        .await?;
        Ok(results.into_iter().unzip())
    }

    /// Waits until the projections applied every event stored so far.
    pub(super) async fn caught_up(&self) -> anyhow::Result<()> {
        self.live.caught_up(self.log.last_seq().await?).await;
        Ok(())
    }

    /// Seals the royalty log, waits until the projections applied everything, stops them,
    /// and returns the stream's event count.
    pub(super) async fn finish(self) -> anyhow::Result<u64> {
        self.live.caught_up(self.log.last_seq().await?).await;
        crate::server::seal_once(&self.live, &self.market, 1).await?;
        let last = self.log.last_seq().await?;
        self.live.caught_up(last).await;
        self.runner.abort();
        Ok(last.0)
    }
}
