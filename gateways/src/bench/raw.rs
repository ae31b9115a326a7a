//! The raw substrate: async-nats publishes and pull consumption with the substrate anchors'
//! settings, and RSA-OAEP encryption (aws-lc-rs, as the engine does it, and the `rsa`
//! crate), timed without the engine.

use super::*;
use anyhow::ensure;
use async_nats::jetstream::{self, consumer, context::Context, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use std::time::{Duration, Instant};

/// A plain async-nats client with the substrate anchors' settings.
pub(super) struct RawClient {
    pub(super) context: Context,
    pub(super) server_version: String,
    pub(super) run_id: String,
}

impl RawClient {
    pub(super) async fn connect(url: &str) -> anyhow::Result<Self> {
        let addresses = url
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| part.parse::<async_nats::ServerAddr>().with_context(|| format!("{part:?} is not a NATS URL; use e.g. nats://127.0.0.1:4222")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(RAW_SUBSCRIPTION_CAPACITY)
            .connect(addresses)
            .await
            .with_context(|| format!("cannot connect to nats at {url}; is nats-server running and reachable?"))?;
        let server_version = client.server_info().version.clone();
        let context =
            jetstream::ContextBuilder::new().timeout(Duration::from_millis(RAW_REQUEST_TIMEOUT_MS)).max_ack_inflight(RAW_ACKS_IN_FLIGHT_MAX).build(client);
        Ok(RawClient { context, server_version, run_id: run_id() })
    }

    pub(super) async fn delete_stream_if_present(&self, name: &str) -> anyhow::Result<()> {
        if self.context.get_stream(name).await.is_ok() {
            self.context.delete_stream(name).await.with_context(|| format!("cannot delete the bench's stream {name}"))?;
        }
        Ok(())
    }

    /// Removes the bench's engine streams, case 2's included (never any other stream), so
    /// the next engine case starts empty (they all claim `vs.>`).
    pub(super) async fn delete_engine_streams(&self) -> anyhow::Result<()> {
        for name in [BENCH_STREAM, PURCHASE_STREAM] {
            self.delete_stream_if_present(name).await?;
            self.delete_stream_if_present(&format!("{name}{}", engine::log::jetstream::NODE_STREAM_SUFFIX)).await?;
        }
        Ok(())
    }

    pub(super) async fn delete_raw_stream(&self) -> anyhow::Result<()> {
        self.delete_stream_if_present(RAW_STREAM).await
    }

    /// Case 1's raw side: per voucher three publishes on its own subject, each carrying a
    /// unique `Nats-Msg-Id` and the subject sequence the previous ack returned; the next is
    /// sent when that ack arrives. `VOUCHERS_IN_FLIGHT` vouchers at once, from this task.
    pub(super) async fn voucher_workload(&self, plan: &Plan, vouchers: usize, meter: CpuMeter) -> anyhow::Result<Rate> {
        self.delete_raw_stream().await?;
        self.context
            .create_stream(stream::Config {
                name: RAW_STREAM.to_string(),
                subjects: vec!["vb.>".to_string()],
                storage: stream::StorageType::File,
                num_replicas: 1,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_millis(RAW_DUPLICATE_WINDOW_MS),
                max_message_size: RAW_MESSAGE_BYTES_MAX,
                deny_delete: true,
                deny_purge: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("cannot create the raw baseline's stream")?;
        let payload = Bytes::from((0..RAW_PAYLOAD_BYTES).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
        let warmup = plan.warmup_vouchers;
        self.pipelined(0..warmup, &payload).await?;
        let mark = meter.mark();
        let started = Instant::now();
        let mut latencies = self.pipelined(warmup..warmup + vouchers, &payload).await?;
        Ok(mark.attach(Rate::new(3 * vouchers as u64, started.elapsed(), &mut latencies)))
    }

    pub(super) async fn pipelined(&self, range: std::ops::Range<usize>, payload: &Bytes) -> anyhow::Result<Vec<u32>> {
        let mut latencies = Vec::with_capacity(range.len() * 3);
        let mut in_flight = FuturesUnordered::new();
        for index in range {
            if in_flight.len() >= VOUCHERS_IN_FLIGHT
                && let Some(done) = in_flight.next().await
            {
                let done: [u32; 3] = done?;
                latencies.extend_from_slice(&done);
            }
            in_flight.push(self.raw_voucher(index, payload.clone()));
        }
        while let Some(done) = in_flight.next().await {
            latencies.extend_from_slice(&done?);
        }
        Ok(latencies)
    }

    pub(super) async fn raw_voucher(&self, index: usize, payload: Bytes) -> anyhow::Result<[u32; 3]> {
        // The same shape as the engine's: a 32-hex-digit id on the subject, a 32-character
        // message id.
        let id = blake3::hash(format!("{}-{index}", self.run_id).as_bytes()).to_hex();
        let subject = format!("vb.voucher.v{}", &id[..32]);
        let mut expected = 0u64;
        let mut latencies = [0u32; 3];
        for (step, latency) in latencies.iter_mut().enumerate() {
            let message_id = format!("{}{step:08x}", &id[..24]);
            let message = jetstream::message::PublishMessage::build().payload(payload.clone()).message_id(message_id).expected_last_subject_sequence(expected);
            let started = Instant::now();
            let ack = self.context.send_publish(subject.clone(), message).await?.await.with_context(|| format!("raw publish {step} on {subject}"))?;
            ensure!(!ack.duplicate, "raw publish {step} on {subject} was a duplicate: message ids must be unique");
            expected = ack.sequence;
            *latency = micros(started.elapsed());
        }
        Ok(latencies)
    }

    /// Case 3's raw side: every message of the engine's stream through one pull consumer
    /// with AckNone and large batches (the substrate anchors' fastest way to read).
    pub(super) async fn consume_all(&self, expected: u64) -> anyhow::Result<Rate> {
        let stream = self.context.get_stream(BENCH_STREAM).await.context("the engine's stream is missing")?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .context("cannot create the raw pull consumer")?;
        let mut messages =
            consumer.stream().max_messages_per_batch(RAW_CONSUME_BATCH_EVENTS).messages().await.context("cannot pull from the engine's stream")?;
        let started = Instant::now();
        let mut read = 0u64;
        while read < expected {
            let message = messages.next().await.context("the pull consumer ended early")?.context("pulling a message")?;
            std::hint::black_box(message.payload.len());
            read += 1;
        }
        let elapsed = started.elapsed();
        drop(messages);
        let name = consumer.cached_info().name.clone();
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(%error, "the raw consumer expires on its own");
        }
        Ok(Rate::new(read, elapsed, &mut []))
    }

    /// The mean payload of the voucher events the engine wrote (case 1), next to the raw
    /// baseline's fixed size, so the two can be compared.
    pub(super) async fn mean_voucher_event_bytes(&self) -> anyhow::Result<f64> {
        const SAMPLE_EVENTS: u64 = 3_000;
        let stream = self.context.get_stream(BENCH_STREAM).await.context("the engine's stream is missing")?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: "vs.voucher.>".to_string(),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let available = consumer.cached_info().num_pending.min(SAMPLE_EVENTS);
        let mut messages = consumer.stream().max_messages_per_batch(RAW_CONSUME_BATCH_EVENTS).messages().await?;
        let (mut count, mut bytes) = (0u64, 0u64);
        while count < available {
            let message = messages.next().await.context("the pull consumer ended early")??;
            bytes += message.payload.len() as u64;
            count += 1;
        }
        Ok(if count == 0 { 0.0 } else { bytes as f64 / count as f64 })
    }
}

/// Case 4's raw side: RSA-OAEP-SHA256 encryptions of a 32-byte key with the implementation
/// the engine uses (`engine::crypto::wrap_key`: aws-lc-rs) for `measure_ms` on each of
/// `threads` threads (after a short warm-up), summed.
pub(super) fn raw_rsa_oaep(public_key_der: &[u8], threads: usize, measure_ms: u64) -> anyhow::Result<Rate> {
    let key = engine::crypto::RsaPublic::from_der(public_key_der).context("the player's public key does not parse")?;
    let secret = engine::crypto::SecretKey::from_bytes([7u8; 32]);
    time_threads(threads, measure_ms, || engine::crypto::wrap_key(&key, &secret).map(std::hint::black_box).map_err(|e| anyhow::anyhow!("rsa encrypt: {e}")))
}

/// The same with the `rsa` crate 0.9 (what the engine used before): the other
/// implementation's rate beside it, so the choice stays measured.
pub(super) fn raw_rsa_crate_oaep(public_key_der: &[u8], threads: usize, measure_ms: u64) -> anyhow::Result<Rate> {
    use rsa::pkcs8::DecodePublicKey as _;
    let key = rsa::RsaPublicKey::from_public_key_der(public_key_der).context("the player's public key does not parse")?;
    let secret = [7u8; 32];
    time_threads(threads, measure_ms, || {
        key.encrypt(&mut rand_08::thread_rng(), rsa::Oaep::new::<rsa::sha2::Sha256>(), &secret)
            .map(std::hint::black_box)
            .map_err(|e| anyhow::anyhow!("rsa encrypt: {e}"))
    })
}

/// Runs `operation` for `measure_ms` on each of `threads` threads after three warm-up
/// calls; the summed rate.
fn time_threads<T>(threads: usize, measure_ms: u64, operation: impl Fn() -> anyhow::Result<T> + Sync) -> anyhow::Result<Rate> {
    let measure = Duration::from_millis(measure_ms);
    let results: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let operation = &operation;
                scope.spawn(move || -> anyhow::Result<(u64, Duration)> {
                    for _ in 0..3 {
                        operation()?;
                    }
                    let started = Instant::now();
                    let mut done = 0u64;
                    while started.elapsed() < measure {
                        operation()?;
                        done += 1;
                    }
                    Ok((done, started.elapsed()))
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an rsa thread panicked")))).collect()
    });
    let mut operations = 0;
    let mut per_s = 0.0;
    let mut seconds: f64 = 0.0;
    for result in results {
        let (done, elapsed) = result?;
        operations += done;
        per_s += done as f64 / elapsed.as_secs_f64().max(1e-9);
        seconds = seconds.max(elapsed.as_secs_f64());
    }
    Ok(Rate { operations, seconds, per_s, ..Rate::default() })
}
