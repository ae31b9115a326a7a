//! `serve --tlog-listen ADDR`: the royalty log as C2SP tlog-tiles over plain HTTP, read
//! only (GET and HEAD; any other method is 405): `/checkpoint` (the newest seal's signed
//! note, `text/plain; charset=utf-8`, not cached), `/tile/<L>/<N>[.p/<W>]` and
//! `/tile/entries/<N>[.p/<W>]` (`application/octet-stream`, immutable). A tlog client
//! computes its own inclusion and consistency proofs from them (`engine::tiles`).
//!
//! The files come from a `projections::tiles::TiledLog` that follows the live royalty log:
//! each request first takes in the seals recorded since the last one (their entries with the
//! key commitments the live log computed as it chained them: no chain secret, so a `serve`
//! without the royalty master key serves tiles too) and publishes their checkpoints, each
//! checked against the leaves' tree. Only sealed entries are served.
//!
//! With witnesses (`serve --witness URL=VKEY … [--witness-quorum K]`), `cosign` sends every
//! new checkpoint, in order, to every witness (`add-checkpoint` from the size the witness last
//! cosigned, learnt from a 409 when unknown, with the consistency proof from the tiles'
//! tree), keeps the cosignature lines that verify, and once K witnesses cosigned publishes
//! that note: `/checkpoint` then serves it (and nothing before the policy is first met), and
//! `<data-dir>/witness/checkpoint.cosigned` holds it. Not here: the tiles' layout
//! (`engine::tiles`), the leaves (`projections::tiles`), the witness (`crate::witness`).

use super::EngineState;
use crate::common::cosign::Answer;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engine::cosignature::CosignatureVerifier;
use http::{StatusCode, header};
use projections::tiles::TiledLog;
use std::sync::{Arc, Mutex};

/// What a client may cache a checkpoint for: it changes with each seal.
const CHECKPOINT_CACHE: &str = "no-cache";
/// Tiles and bundles never change once served (a partial tile has its own path).
const TILE_CACHE: &str = "public, max-age=31536000, immutable";

/// The tiled log and how far it has followed the live one.
pub struct TlogSite {
    state: Arc<EngineState>,
    published: Mutex<Published>,
    witnessing: Option<Witnessing>,
}

/// The witnesses a `serve` sends its checkpoints to, and how many must cosign.
#[derive(Clone, Debug)]
pub struct Witnessing {
    pub witnesses: Vec<(String, CosignatureVerifier)>,
    pub quorum: usize,
}

/// The cosigned checkpoint file, under the data directory.
pub const COSIGNED_FILE: &str = "witness/checkpoint.cosigned";

struct Published {
    tiled: TiledLog,
    /// Seals taken in so far.
    seals_seen: usize,
    /// Why the tiled log stopped following (a chain or checkpoint fault, logged once).
    stuck: Option<String>,
    /// The newest checkpoint that met the witness policy, and its size.
    cosigned: Option<(String, u64)>,
    /// The size each witness last cosigned (`None`: not known yet; a 409 tells).
    witness_sizes: Vec<Option<u64>>,
    /// Checkpoints published and not yet cosigned by the policy, oldest first (at most
    /// `UNSENT_CHECKPOINTS_MAX`: past it the oldest is skipped, its successors' consistency
    /// proofs covering it).
    unsent: std::collections::VecDeque<(String, u64)>,
}

/// Checkpoints waiting to be cosigned, at most.
const UNSENT_CHECKPOINTS_MAX: usize = 256;
/// Checkpoints sent to the witnesses in one round, at most.
const CHECKPOINTS_PER_ROUND: usize = 16;

impl TlogSite {
    pub fn new(state: Arc<EngineState>, witnessing: Option<Witnessing>) -> Self {
        let tiled = TiledLog::following();
        let witness_sizes = witnessing.as_ref().map_or(0, |witnessing| witnessing.witnesses.len());
        let published = Published { tiled, seals_seen: 0, stuck: None, cosigned: None, witness_sizes: vec![None; witness_sizes], unsent: Default::default() };
        Self { state, published: Mutex::new(published), witnessing }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().expect("the tiled log's lock is never poisoned: nothing panics under it")
    }

    /// Sends each published checkpoint not yet cosigned by the policy to the witnesses, in
    /// order (at most `CHECKPOINTS_PER_ROUND` a round), publishing each cosigned note; one
    /// that did not meet the policy is sent again next round, until a newer one met it or
    /// the witnesses moved past it.
    pub async fn cosign(&self) {
        if self.witnessing.is_none() {
            return;
        }
        let unsent: Vec<(String, u64)> = self.lock().unsent.iter().take(CHECKPOINTS_PER_ROUND).cloned().collect();
        let mut met = None;
        for (note, size) in unsent {
            if self.cosign_one(note, size).await {
                met = Some(size);
            }
        }
        let sizes: Vec<u64> = self.lock().unsent.iter().map(|(_, size)| *size).collect();
        let superseded: Vec<u64> = sizes.into_iter().filter(|size| self.superseded(*size)).collect();
        self.lock().unsent.retain(|(_, size)| met.is_none_or(|met| *size > met) && !superseded.contains(size));
    }

    /// Whether enough witnesses already cosigned past `size` (a newer checkpoint, sent by an
    /// earlier run) that this one can never meet the policy: it is skipped, the newer one's
    /// consistency proof covering it.
    fn superseded(&self, size: u64) -> bool {
        let Some(witnessing) = &self.witnessing else { return false };
        self.lock().witness_sizes.iter().filter(|known| known.is_some_and(|known| known > size)).count() >= witnessing.quorum
    }

    /// Gets one checkpoint cosigned; whether the policy was met.
    async fn cosign_one(&self, note: String, size: u64) -> bool {
        let Some(witnessing) = &self.witnessing else { return false };
        let sizes = self.lock().witness_sizes.clone();
        let mut lines = String::new();
        let mut cosigners = 0;
        for (position, (url, verifier)) in witnessing.witnesses.iter().enumerate() {
            let mut old = sizes[position].unwrap_or(0);
            // At most one retry: after a 409 the witness's size is known.
            for _ in 0..2 {
                let Some(proof) = (if old == 0 { Some(Vec::new()) } else { self.lock().tiled.consistency_proof_to(old, size) }) else {
                    tracing::warn!(witness = %url, old, size, "the witness's size is not in this log's tree: a witness of another view of the log");
                    break;
                };
                match crate::common::cosign::add_checkpoint(url, old, &proof, &note).await {
                    Ok(Answer::Cosigned(answer)) => {
                        match crate::common::cosign::cosigned_note(&note, &answer, verifier) {
                            Some(with) => {
                                lines.push_str(&with[note.len()..]);
                                cosigners += 1;
                                self.lock().witness_sizes[position] = Some(size);
                            }
                            None => tracing::warn!(witness = %url, "the witness answered without a valid cosignature by its key"),
                        }
                        break;
                    }
                    Ok(Answer::Conflict(recorded)) if recorded <= size && recorded != old => {
                        self.lock().witness_sizes[position] = Some(recorded);
                        old = recorded;
                    }
                    Ok(answer) => {
                        tracing::warn!(witness = %url, ?answer, old, size, "the witness did not cosign");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(witness = %url, error = format!("{error:#}"), "cannot reach the witness");
                        break;
                    }
                }
            }
        }
        if cosigners < witnessing.quorum {
            tracing::warn!(cosigners, quorum = witnessing.quorum, size, "the witness policy is not met yet; the checkpoint stays unpublished");
            return false;
        }
        let cosigned = format!("{note}{lines}");
        let file = self.state.config.data_dir.join(COSIGNED_FILE);
        let written = file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&file, &cosigned));
        if let Err(error) = written {
            tracing::warn!(%error, path = %file.display(), "cannot write the cosigned checkpoint file");
        }
        tracing::info!(size, cosigners, "published a cosigned checkpoint");
        self.lock().cosigned = Some((cosigned, size));
        true
    }

    /// Takes in the seals recorded since the last call.
    pub async fn refresh(self: &Arc<Self>) {
        let (seen, held, stuck) = {
            let published = self.lock();
            (published.seals_seen, published.tiled.entries(), published.stuck.is_some())
        };
        if stuck {
            return;
        }
        let (seals, notes, entries) = self.state.live.read(|p| {
            let royalty = &p.royalty;
            let new = royalty.seals.get(seen..).unwrap_or_default();
            let size = new.iter().filter_map(|seal| seal.checkpoint.as_ref().map(|checkpoint| checkpoint.tree_size)).max().unwrap_or(0);
            // Taken under the lock, read outside it: entries in the store are read from sled.
            let entries = royalty.entries.detached(held, size);
            (royalty.seals.len(), new.iter().filter_map(engine::seal::checkpoint_note).collect::<Vec<_>>(), entries)
        });
        if seals == seen {
            return;
        }
        let site = Arc::clone(self);
        // Many leaves to hash at once after a restart: off the async threads.
        let taken = tokio::task::spawn_blocking(move || {
            let mut published = site.published.lock().expect("the tiled log's lock is never poisoned: nothing panics under it");
            if published.seals_seen != seen {
                return; // another request took them in meanwhile
            }
            // Not a fault of the log: the next refresh tries again (after a rebuild the
            // projections' store is new, and so are the rows it reads).
            let entries = match entries.read() {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(reason = %format!("{:#}", anyhow::Error::new(error)), "the royalty entries to publish cannot be read yet; trying again at the next seal");
                    return;
                }
            };
            let outcome = published.tiled.extend_committed(entries.iter().map(|entry| (&entry.chained, &entry.commitment))).map_err(|fault| fault.to_string());
            let outcome = outcome.and_then(|()| {
                notes.iter().try_for_each(|note| {
                    published.tiled.publish(note).map_err(|error| error.to_string())?;
                    let size = published.tiled.size();
                    // A note of a size already queued (more cosignatures) is not sent again.
                    if published.unsent.back().is_some_and(|(_, queued)| *queued >= size) {
                        return Ok(());
                    }
                    if published.unsent.len() == UNSENT_CHECKPOINTS_MAX {
                        tracing::warn!(size, "too many checkpoints wait for cosignatures; the oldest is skipped (the next proves consistency over it)");
                        published.unsent.pop_front();
                    }
                    published.unsent.push_back((note.clone(), size));
                    Ok(())
                })
            });
            match outcome {
                Ok(()) => published.seals_seen = seals,
                Err(reason) => {
                    tracing::error!(%reason, "the tiled royalty log stops following the live one; it serves the checkpoints published so far");
                    published.stuck = Some(reason);
                }
            }
        })
        .await;
        if let Err(error) = taken {
            tracing::error!(%error, "taking in new seals for the tiles failed");
        }
    }

    /// The file at `path` below the prefix (`checkpoint` — with witnesses, the newest
    /// cosigned one —, a tile or a bundle).
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        let published = self.lock();
        match (path, &self.witnessing) {
            ("checkpoint", Some(_)) => published.cosigned.as_ref().map(|(note, _)| note.as_bytes().to_vec()),
            _ => published.tiled.get(path),
        }
    }
}

async fn checkpoint(State(site): State<Arc<TlogSite>>) -> Response {
    site.refresh().await;
    match site.get("checkpoint") {
        Some(note) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, CHECKPOINT_CACHE)], note).into_response(),
        None => {
            (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, CHECKPOINT_CACHE)], "no checkpoint sealed (and cosigned, with witnesses) yet\n").into_response()
        }
    }
}

async fn tile(State(site): State<Arc<TlogSite>>, Path(rest): Path<String>) -> Response {
    site.refresh().await;
    match site.get(&format!("tile/{rest}")) {
        Some(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream"), (header::CACHE_CONTROL, TILE_CACHE)], bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "no such tile in the published log\n").into_response(),
    }
}

pub fn router(site: Arc<TlogSite>) -> axum::Router {
    axum::Router::new().route("/checkpoint", get(checkpoint)).route("/tile/{*rest}", get(tile)).with_state(site)
}

/// Serves the tiles on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    site: Arc<TlogSite>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(site)).with_graceful_shutdown(shutdown).await
}

/// How often the witness job looks for a new checkpoint to send.
pub const COSIGN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Follows the seals and gets each new checkpoint cosigned, until `stopping` says stop.
pub async fn cosign_loop(site: Arc<TlogSite>, mut stopping: tokio::sync::watch::Receiver<bool>) {
    loop {
        site.refresh().await;
        site.cosign().await;
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(COSIGN_INTERVAL) => {}
        }
    }
}
