//! `serve --tlog-listen ADDR`: the royalty log as C2SP tlog-tiles over plain HTTP, read
//! only (GET and HEAD; any other method is 405): `/checkpoint` (the newest seal's signed
//! note, `text/plain; charset=utf-8`, not cached), `/tile/<L>/<N>[.p/<W>]` and
//! `/tile/entries/<N>[.p/<W>]` (`application/octet-stream`, immutable). A tlog client
//! computes its own inclusion and consistency proofs from them (`engine::tiles`).
//!
//! The files come from a `projections::tiles::TiledLog` that follows the live royalty log:
//! each request first takes in the seals recorded since the last one (their entries,
//! verified along the chain with the master key, which the leaves' key commitments need)
//! and publishes their checkpoints. Only sealed entries are served.
//!
//! With witnesses (`serve --witness URL=VKEY … [--witness-quorum K]`), `cosign` sends each
//! new checkpoint to every witness (`add-checkpoint` from the size the witness last
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
}

impl TlogSite {
    pub fn new(state: Arc<EngineState>, witnessing: Option<Witnessing>) -> Self {
        let tiled = TiledLog::new(&state.royalty_master, projections::royalty_log::EPOCH);
        let witness_sizes = witnessing.as_ref().map_or(0, |witnessing| witnessing.witnesses.len());
        let published = Published { tiled, seals_seen: 0, stuck: None, cosigned: None, witness_sizes: vec![None; witness_sizes] };
        Self { state, published: Mutex::new(published), witnessing }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().expect("the tiled log's lock is never poisoned: nothing panics under it")
    }

    /// Sends the newest published checkpoint to the witnesses if the policy has not yet been
    /// met for its size; publishes the cosigned note once it is.
    pub async fn cosign(&self) {
        let Some(witnessing) = &self.witnessing else { return };
        let (note, size, sizes) = {
            let published = self.lock();
            let Some(note) = published.tiled.note() else { return };
            if published.cosigned.as_ref().is_some_and(|(_, cosigned)| *cosigned >= published.tiled.size()) {
                return;
            }
            (note.to_string(), published.tiled.size(), published.witness_sizes.clone())
        };
        let mut lines = String::new();
        let mut cosigners = 0;
        for (position, (url, verifier)) in witnessing.witnesses.iter().enumerate() {
            let mut old = sizes[position].unwrap_or(0);
            // At most one retry: after a 409 the witness's size is known.
            for _ in 0..2 {
                let Some(proof) = (if old == 0 { Some(Vec::new()) } else { self.lock().tiled.consistency_proof(old) }) else {
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
            return;
        }
        let cosigned = format!("{note}{lines}");
        let file = self.state.config.data_dir.join(COSIGNED_FILE);
        let written = file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&file, &cosigned));
        if let Err(error) = written {
            tracing::warn!(%error, path = %file.display(), "cannot write the cosigned checkpoint file");
        }
        tracing::info!(size, cosigners, "published a cosigned checkpoint");
        self.lock().cosigned = Some((cosigned, size));
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
            let first = usize::try_from(held).unwrap_or(usize::MAX);
            let last = usize::try_from(size).unwrap_or(usize::MAX).min(royalty.entries.len());
            let entries = royalty.entries.get(first..last).map(<[_]>::to_vec).unwrap_or_default();
            (royalty.seals.len(), new.iter().filter_map(engine::seal::checkpoint_note).collect::<Vec<_>>(), entries)
        });
        if seals == seen {
            return;
        }
        let site = Arc::clone(self);
        // Verifying the entries decrypts each one: off the async threads.
        let taken = tokio::task::spawn_blocking(move || {
            let mut published = site.published.lock().expect("the tiled log's lock is never poisoned: nothing panics under it");
            if published.seals_seen != seen {
                return; // another request took them in meanwhile
            }
            let outcome = published
                .tiled
                .extend(&entries)
                .map_err(|fault| fault.to_string())
                .and_then(|()| notes.iter().try_for_each(|note| published.tiled.publish(note).map_err(|error| error.to_string())));
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
