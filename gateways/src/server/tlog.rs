//! `serve --tlog-listen ADDR`: the royalty log as C2SP tlog-tiles over plain HTTP, read
//! only (GET and HEAD; any other method is 405): `/checkpoint` (the newest seal's signed
//! note, `text/plain; charset=utf-8`, not cached), `/tile/<L>/<N>[.p/<W>]` and
//! `/tile/entries/<N>[.p/<W>]` (`application/octet-stream`, immutable). A tlog client
//! computes its own inclusion and consistency proofs from them (`engine::tiles`).
//!
//! The files come from a `projections::tiles::TiledLog` that follows the live royalty log:
//! each request first takes in the seals recorded since the last one (their entries,
//! verified along the chain with the master key, which the leaves' key commitments need)
//! and publishes their checkpoints. Only sealed entries are served. Not here: the tiles'
//! layout (`engine::tiles`), the leaves (`projections::tiles`).

use super::EngineState;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
}

struct Published {
    tiled: TiledLog,
    /// Seals taken in so far.
    seals_seen: usize,
    /// Why the tiled log stopped following (a chain or checkpoint fault, logged once).
    stuck: Option<String>,
}

impl TlogSite {
    pub fn new(state: Arc<EngineState>) -> Self {
        let tiled = TiledLog::new(&state.royalty_master, projections::royalty_log::EPOCH);
        Self { state, published: Mutex::new(Published { tiled, seals_seen: 0, stuck: None }) }
    }

    /// Takes in the seals recorded since the last call.
    pub async fn refresh(self: &Arc<Self>) {
        let (seen, held, stuck) = {
            let published = self.published.lock().expect("the tiled log's lock is never poisoned: nothing panics under it");
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

    /// The file at `path` below the prefix (`checkpoint`, a tile or a bundle).
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.published.lock().expect("the tiled log's lock is never poisoned: nothing panics under it").tiled.get(path)
    }
}

async fn checkpoint(State(site): State<Arc<TlogSite>>) -> Response {
    site.refresh().await;
    match site.get("checkpoint") {
        Some(note) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, CHECKPOINT_CACHE)], note).into_response(),
        None => (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, CHECKPOINT_CACHE)], "no checkpoint sealed yet\n").into_response(),
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
