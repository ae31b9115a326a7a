//! Group commit for signatures: transaction records waiting to be signed are signed
//! together, one RSA-PSS signature over the Merkle root of the batch
//! (`media::sign_transaction_batch`), on the blocking pool.
//!
//! An RSA-2048 private-key operation costs ≈ 1.7 ms here (≈ 600/s per core), so one
//! signature per redemption capped redemptions far below the public-key work a redemption
//! needs. Here the first waiting record starts a drain task, which gathers for
//! `GATHER_MS` (unless `GATHER_ENOUGH` records already wait), signs what waits, and goes
//! on while anything does. Alone, a record waits the gathering and one signature; under
//! load, each signature covers up to `TRANSACTION_BATCH_MAX` records. Without the gathering
//! a busy engine signed batches of 2 or 3 back to back, one core doing nothing else.

use crate::crypto::CryptoError;
use crate::media::{self, TRANSACTION_BATCH_MAX};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// How long a round gathers records before signing them, in milliseconds. Rounds follow
/// one another, so one core spends about sign / (GATHER_MS + sign) of its time signing
/// whatever the load: with a 1.7 ms signature, 4 ms gave ~30 % of a core (profile of
/// 2,165 redemptions/s over gRPC: batches of ~15, 10 % of the engine's CPU), 12 ms gives
/// ~12 % for 8 ms more latency per redemption.
pub const GATHER_MS: u64 = 12;
/// Records waiting that make a round sign at once, without gathering.
pub const GATHER_ENOUGH: usize = 256;

#[derive(Default)]
struct Queue {
    waiting: Vec<(Vec<u8>, Reply)>,
    /// A drain task is running (it empties `waiting` before it stops).
    draining: bool,
}

/// Signs transaction records in batches with the engine's key (module docs).
pub struct BatchSigner {
    private: crate::crypto::RsaPrivate,
    queue: Mutex<Queue>,
}

/// Why a batch signature was not made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing the batch failed: {0}")]
    Crypto(String),
    #[error("the signing task failed: {0}")]
    Task(String),
}

impl BatchSigner {
    pub fn new(private: crate::crypto::RsaPrivate) -> Arc<Self> {
        Arc::new(Self { private, queue: Mutex::new(Queue::default()) })
    }

    /// The batch signature of one record's canonical bytes (`TransactionRecord::message`).
    pub async fn sign(self: &Arc<Self>, message: Vec<u8>) -> Result<Vec<u8>, SignError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push((message, reply));
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drain());
        }
        answer.await.map_err(|_| SignError::Task("the drain task stopped without answering".into()))?.map_err(SignError::Crypto)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is only pushed to and drained: a panic elsewhere leaves it consistent.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs what is waiting, batch after batch, until nothing is.
    async fn drain(self: Arc<Self>) {
        loop {
            if self.lock().waiting.len() < GATHER_ENOUGH {
                tokio::time::sleep(std::time::Duration::from_millis(GATHER_MS)).await;
            }
            let batch: Vec<(Vec<u8>, Reply)> = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.draining = false;
                    return;
                }
                let take = queue.waiting.len().min(TRANSACTION_BATCH_MAX);
                queue.waiting.drain(..take).collect()
            };
            let (messages, replies): (Vec<Vec<u8>>, Vec<Reply>) = batch.into_iter().unzip();
            let signer = Arc::clone(&self);
            let signed = tokio::task::spawn_blocking(move || media::sign_transaction_batch(&signer.private, &messages)).await;
            match signed {
                Ok(Ok(signatures)) => {
                    for (reply, signature) in replies.into_iter().zip(signatures) {
                        // A caller that went away no longer needs its signature.
                        let _ = reply.send(Ok(signature));
                    }
                }
                Ok(Err(error)) => {
                    let error: CryptoError = error;
                    for reply in replies {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                // The blocking task panicked: the replies drop, and each caller gets Task.
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_keys;
    use crate::ids::*;
    use crate::media::{BatchSignature, TransactionRecord, verify_transaction};

    fn record(n: usize) -> TransactionRecord {
        TransactionRecord {
            voucher_id: VoucherId::new(format!("v{n}")),
            media_id: MediaId::new("m"),
            rendition: "high".into(),
            node_id: NodeId::new("n"),
            delivered_at: Millis(1_760_000_000_000 + n as i64),
            engine_key_id: test_keys::fixed_rsa().public().key_id(),
            consumer_id: ConsumerId::new("alice"),
            cert_serial: CertSerial::new("c"),
            content_hash: [n as u8; 32],
            recovery: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_share_signatures_and_each_verifies_alone() {
        let signer = BatchSigner::new(test_keys::fixed_rsa());
        let public = test_keys::fixed_rsa().public();
        let records: Vec<TransactionRecord> = (0..200).map(record).collect();
        let signatures = futures::future::join_all(records.iter().map(|record| signer.sign(record.message()))).await;
        let mut roots = std::collections::BTreeSet::new();
        for (n, (record, signature)) in records.iter().zip(&signatures).enumerate() {
            let signature = signature.as_ref().expect("signed");
            verify_transaction(&public, record, signature).expect("each record verifies with its own batch signature");
            let batch = BatchSignature::parse(signature).expect("a batch signature");
            roots.insert(batch.root_signature.to_vec());
            // Another record, or a changed one, does not verify with it.
            let other = &records[(n + 1) % records.len()];
            assert!(verify_transaction(&public, other, signature).is_err());
            let changed = TransactionRecord { delivered_at: Millis(record.delivered_at.0 + 1), ..record.clone() };
            assert!(verify_transaction(&public, &changed, signature).is_err());
        }
        assert!(roots.len() < records.len() / 4, "200 concurrent records took {} signatures: they were not batched", roots.len());
    }

    #[test]
    fn a_tampered_batch_signature_fails() {
        let private = test_keys::fixed_rsa();
        let public = private.public();
        let records: Vec<TransactionRecord> = (0..5).map(record).collect();
        let messages: Vec<Vec<u8>> = records.iter().map(TransactionRecord::message).collect();
        let signatures = media::sign_transaction_batch(&private, &messages).expect("sign");
        let good = &signatures[2];
        verify_transaction(&public, &records[2], good).expect("verifies");
        for position in 0..good.len() {
            let mut bad = good.clone();
            bad[position] ^= 0x01;
            assert!(verify_transaction(&public, &records[2], &bad).is_err(), "a flipped bit at byte {position} is caught");
        }
        // A plain signature still verifies (copies delivered before batching).
        let plain = crate::crypto::sign(&private, &records[2].message()).expect("sign");
        verify_transaction(&public, &records[2], &plain).expect("plain signatures stay valid");
        let other = test_keys::fixed_rsa_2();
        let foreign = media::sign_transaction_batch(&other, &messages).expect("sign");
        assert!(verify_transaction(&public, &records[2], &foreign[2]).is_err(), "another key's batch does not verify");
    }
}
