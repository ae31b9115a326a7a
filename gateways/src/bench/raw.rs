//! The raw substrate: async-nats publishes and pull consumption with the substrate anchors'
//! settings, RSA-OAEP encryption (aws-lc-rs, as the engine does it, and the `rsa` crate), and
//! case 9's bytes over loopback TCP and through AES-256-GCM (`aes-gcm`, as the player
//! decrypts), timed without the engine.

use super::*;
use anyhow::ensure;
use async_nats::jetstream::{self, consumer, context::Context, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use std::path::Path;
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

    /// Case 4's raw appends: `count` publishes of `payload_bytes` each, every one on a
    /// subject of its own (a redemption appends to its voucher's subject) with a unique
    /// `Nats-Msg-Id` and an expected last subject sequence, as the engine sends them,
    /// `VOUCHERS_IN_FLIGHT` at once from this task, after `warmup` untimed; the rate with
    /// its CPU (process + nats-server).
    pub(super) async fn single_appends(&self, count: usize, payload_bytes: usize, warmup: usize, meter: CpuMeter) -> anyhow::Result<Rate> {
        let payload = Bytes::from((0..payload_bytes).map(|i| (i * 17 % 251) as u8).collect::<Vec<u8>>());
        let run = |range: std::ops::Range<usize>| {
            let payload = payload.clone();
            async move {
                let mut latencies = Vec::with_capacity(range.len());
                let mut in_flight = FuturesUnordered::new();
                for index in range {
                    if in_flight.len() >= VOUCHERS_IN_FLIGHT
                        && let Some(done) = in_flight.next().await
                    {
                        latencies.push(done?);
                    }
                    in_flight.push(self.single_append(index, payload.clone()));
                }
                while let Some(done) = in_flight.next().await {
                    latencies.push(done?);
                }
                anyhow::Ok(latencies)
            }
        };
        run(0..warmup).await?;
        let mark = meter.mark();
        let started = Instant::now();
        let mut latencies = run(warmup..warmup + count).await?;
        Ok(mark.attach(Rate::new(count as u64, started.elapsed(), &mut latencies)))
    }

    async fn single_append(&self, index: usize, payload: Bytes) -> anyhow::Result<u32> {
        // The shape of raw_voucher's: a 32-hex-digit id on the subject, a 32-character
        // message id.
        let id = blake3::hash(format!("{}-redeem-{index}", self.run_id).as_bytes()).to_hex();
        let subject = format!("vb.voucher.r{}", &id[..32]);
        let message = jetstream::message::PublishMessage::build().payload(payload).message_id(&id[..32]).expected_last_subject_sequence(0);
        let started = Instant::now();
        let ack = self.context.send_publish(subject.clone(), message).await?.await.with_context(|| format!("raw publish on {subject}"))?;
        ensure!(!ack.duplicate, "raw publish on {subject} was a duplicate: message ids must be unique");
        Ok(micros(started.elapsed()))
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
pub(super) fn time_threads<T>(threads: usize, measure_ms: u64, operation: impl Fn() -> anyhow::Result<T> + Sync) -> anyhow::Result<Rate> {
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

// ---- case 9's raw side: the bytes of a delivery, moved and decrypted without the engine ----

/// A media's worth of AES-256-GCM chunks for the raw delivery baselines: `bytes` long in
/// all (the size of the container the engine side delivers), cut into pieces of
/// `chunk_plain` plaintext bytes plus the 16-byte tag, as a format-3 rendition is.
pub(super) struct RawMedia {
    pub(super) blob: Vec<u8>,
    key: [u8; 32],
    chunk_plain: usize,
}

/// Bytes of an AES-GCM tag.
const RAW_TAG_BYTES: usize = 16;
/// Associated data of a raw chunk: about what the player's chunks carry (labels, ids, the
/// content hash, the position).
const RAW_CHUNK_AAD_BYTES: usize = 128;
/// The raw readers' receive buffer when they only count bytes.
const RAW_READ_BUFFER_BYTES: usize = 256 * 1024;

impl RawMedia {
    pub(super) fn new(bytes: usize, chunk_plain: usize) -> anyhow::Result<Self> {
        use aes_gcm::aead::{AeadInOut as _, KeyInit as _};
        let key = crypto::random_bytes::<32>();
        let cipher = aes_gcm::Aes256Gcm::new(&key.into());
        let mut blob = vec![0u8; bytes];
        let piece = chunk_plain + RAW_TAG_BYTES;
        for (index, chunk) in blob.chunks_mut(piece).enumerate() {
            ensure!(chunk.len() > RAW_TAG_BYTES, "a raw media of {bytes} bytes leaves a last chunk shorter than its tag");
            let (plain, tag) = chunk.split_at_mut(chunk.len() - RAW_TAG_BYTES);
            plain.fill((index % 251) as u8);
            let made = cipher
                .encrypt_inout_detached(&Self::nonce(index).into(), &[0u8; RAW_CHUNK_AAD_BYTES], plain.into())
                .map_err(|_| anyhow::anyhow!("aes-gcm refused a raw chunk"))?;
            tag.copy_from_slice(&made);
        }
        Ok(Self { blob, key, chunk_plain })
    }

    fn nonce(index: usize) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(index as u64).to_le_bytes());
        nonce
    }

    /// Decrypts one received copy piece by piece as `read_piece` fills a buffer with each,
    /// handing each decrypted piece to `plaintext`.
    fn decrypt_pieces(
        &self,
        mut read_piece: impl FnMut(&mut [u8]) -> std::io::Result<()>,
        mut plaintext: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        use aes_gcm::aead::{AeadInOut as _, KeyInit as _};
        let cipher = aes_gcm::Aes256Gcm::new(&self.key.into());
        let piece = self.chunk_plain + RAW_TAG_BYTES;
        let mut buffer = vec![0u8; piece];
        let mut left = self.blob.len();
        let mut index = 0;
        while left > 0 {
            let len = left.min(piece);
            let received = &mut buffer[..len];
            read_piece(received).context("a raw reader lost its connection")?;
            let (data, tag) = received.split_at_mut(len - RAW_TAG_BYTES);
            let tag: [u8; RAW_TAG_BYTES] = (&*tag).try_into().expect("the split leaves exactly the tag");
            cipher
                .decrypt_inout_detached(&Self::nonce(index).into(), &[0u8; RAW_CHUNK_AAD_BYTES], data.into(), &tag.into())
                .map_err(|_| anyhow::anyhow!("a raw chunk did not decrypt"))?;
            plaintext(std::hint::black_box(data)).context("a raw reader cannot write its copy")?;
            left -= len;
            index += 1;
        }
        Ok(())
    }
}

/// What one raw delivery baseline moved: MiB/s over every copy, and this process's CPU per
/// MiB (nothing else runs in it meanwhile).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RawDelivery {
    pub copies: usize,
    pub seconds: f64,
    pub mib_s: f64,
    pub cpu_ms_per_mib: Option<f64>,
}

impl RawDelivery {
    fn measured(copies: usize, bytes: usize, started: Instant, cpu_before: Option<u64>) -> Self {
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let mib = (copies * bytes) as f64 / MIB;
        let cpu_ms_per_mib =
            process_cpu_ticks("self").zip(cpu_before).map(|(after, before)| after.saturating_sub(before) as f64 * 1000.0 / USER_HZ as f64 / mib);
        Self { copies, seconds, mib_s: mib / seconds, cpu_ms_per_mib }
    }
}

/// Bytes in a MiB.
pub(super) const MIB: f64 = 1024.0 * 1024.0;

/// A loopback TCP copy of `media.blob` to each of `readers` readers at once (a writer
/// thread per reader); with `decrypt`, each reader also decrypts every piece as it
/// arrives, as a player does.
/// What each reader of `raw_tcp_delivery` does with the bytes it receives.
#[derive(Clone, Copy, Debug)]
pub(super) enum RawReader<'a> {
    /// Counts them.
    Count,
    /// Decrypts each piece as it arrives.
    Decrypt,
    /// Decrypts each piece and writes the plaintext to a file of its own in this directory
    /// (as a player writes its copy; the files are removed after the timing).
    DecryptAndWrite(&'a Path),
}

pub(super) fn raw_tcp_delivery(media: &RawMedia, readers: usize, reader: RawReader<'_>) -> anyhow::Result<RawDelivery> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1 for the raw delivery baseline")?;
    let address = listener.local_addr()?;
    let cpu_before = process_cpu_ticks("self");
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let writers = scope.spawn(|| -> anyhow::Result<()> {
            std::thread::scope(|scope| {
                let mut sending = Vec::with_capacity(readers);
                for _ in 0..readers {
                    let (mut stream, _) = listener.accept().context("the raw delivery baseline's accept failed")?;
                    sending.push(scope.spawn(move || -> anyhow::Result<()> {
                        stream.write_all(&media.blob)?;
                        stream.shutdown(std::net::Shutdown::Write)?;
                        Ok(())
                    }));
                }
                sending.into_iter().try_for_each(|writer| writer.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a raw writer panicked"))))
            })
        });
        let reading: Vec<_> = (0..readers)
            .map(|number| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut stream = std::net::TcpStream::connect(address).context("a raw reader cannot connect")?;
                    if let RawReader::DecryptAndWrite(dir) = reader {
                        let path = dir.join(format!("raw-copy-{number}"));
                        let mut file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
                        media.decrypt_pieces(|piece| stream.read_exact(piece), |plaintext| file.write_all(plaintext))?;
                    } else if let RawReader::Decrypt = reader {
                        media.decrypt_pieces(|piece| stream.read_exact(piece), |_| Ok(()))?;
                    } else {
                        let mut buffer = vec![0u8; RAW_READ_BUFFER_BYTES];
                        let mut received = 0;
                        loop {
                            match stream.read(&mut buffer)? {
                                0 => break,
                                read => received += read,
                            }
                        }
                        ensure!(received == media.blob.len(), "a raw reader got {received} of {} bytes", media.blob.len());
                    }
                    Ok(())
                })
            })
            .collect();
        let mut results: Vec<anyhow::Result<()>> =
            reading.into_iter().map(|reader| reader.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a raw reader panicked")))).collect();
        results.push(writers.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the raw writers panicked"))));
        results
    });
    let measured = RawDelivery::measured(readers, media.blob.len(), started, cpu_before);
    if let RawReader::DecryptAndWrite(dir) = reader {
        for number in 0..readers {
            let _ = std::fs::remove_file(dir.join(format!("raw-copy-{number}")));
        }
    }
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(measured)
}

/// AES-256-GCM decryption (the `aes-gcm` crate the player decrypts with) of `copies` copies
/// of `media.blob`, spread over `threads` threads: each piece copied into a buffer (as a
/// read would) and decrypted in place.
pub(super) fn raw_aes_gcm_delivery(media: &RawMedia, copies: usize, threads: usize) -> anyhow::Result<RawDelivery> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let cpu_before = process_cpu_ticks("self");
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let next = &next;
                scope.spawn(move || -> anyhow::Result<()> {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < copies {
                        let mut offset = 0;
                        media.decrypt_pieces(
                            |piece| {
                                piece.copy_from_slice(&media.blob[offset..offset + piece.len()]);
                                offset += piece.len();
                                Ok(())
                            },
                            |_| Ok(()),
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a raw decrypting thread panicked")))).collect()
    });
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(RawDelivery::measured(copies, media.blob.len(), started, cpu_before))
}
