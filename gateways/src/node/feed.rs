//! The node's loops: heartbeats to the engine and the assignment feed, resumed from its
//! checkpoint.

use super::state::*;
use super::*;
use anyhow::Context;
use proto::v1::{Assignment, HeartbeatRequest, SubscribeAssignmentsRequest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    shutdown.wait_for(|stop| *stop).await.ok();
}

pub(super) async fn heartbeat_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = ticker.tick() => {}
        }
        let stats = shared.stats();
        let request = HeartbeatRequest {
            slots_in_use: stats.slots_in_use,
            cache_items: stats.cache_items,
            cache_accesses: stats.cache_accesses,
            cache_misses: stats.cache_misses,
        };
        let mut engine = shared.engine.clone();
        match tokio::time::timeout(Duration::from_millis(HEARTBEAT_TIMEOUT_MS), engine.heartbeat(request)).await {
            Ok(Ok(answer)) => {
                debug!(node_id = %shared.node_id, slots_in_use = stats.slots_in_use, "heartbeat");
                // The engine rotated its token key: get this node's access key under it
                // before the first grant made under it arrives.
                let token_key_id = answer.into_inner().token_key_id;
                if token_key_id != 0 && !shared.holds_access_key(token_key_id) {
                    shared.refresh_access_keys(Some(token_key_id)).await;
                }
            }
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                // The engine restarted and forgot this node: announce it again.
                match engine.register_node(shared.announcement.clone()).await {
                    Ok(answer) => {
                        shared.take_access_keys(&mut answer.into_inner());
                        info!(node_id = %shared.node_id, "announced again to a restarted engine");
                    }
                    Err(status) => {
                        warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), "announcing again failed; retrying at the next interval")
                    }
                }
            }
            Ok(Err(status)) => {
                warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), "heartbeat failed; retrying at the next interval")
            }
            Err(_) => warn!(node_id = %shared.node_id, timeout_ms = HEARTBEAT_TIMEOUT_MS, "heartbeat timed out; retrying at the next interval"),
        }
    }
}

pub(super) async fn feed_loop(shared: Arc<Shared>, checkpoint: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut backoff_ms = FEED_BACKOFF_MIN_MS;
    let mut resubscribing = false;
    loop {
        let after_seq = shared.assignments.lock().expect("the assignments lock is never poisoned").last_seq();
        let mut engine = shared.engine.clone();
        if resubscribing {
            // The feed broke: the engine may have restarted and forgotten this node, or be
            // gone (then this call fails over to the next engine, which the feed follows).
            // Announce again now rather than at the next heartbeat, so sales resume at once.
            let announced = tokio::select! {
                () = stopped(&mut shutdown) => return,
                announced = engine.register_node(shared.announcement.clone()) => announced,
            };
            let announced = announced.map(|answer| shared.take_access_keys(&mut answer.into_inner()));
            if let Err(status) = announced {
                warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), backoff_ms, "cannot announce to the engine; retrying");
                tokio::select! {
                    () = stopped(&mut shutdown) => return,
                    () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                }
                backoff_ms = (backoff_ms * 2).min(FEED_BACKOFF_MAX_MS);
                continue;
            }
        }
        resubscribing = true;
        let subscribed = tokio::select! {
            () = stopped(&mut shutdown) => return,
            subscribed = engine.subscribe_assignments(SubscribeAssignmentsRequest { after_seq }) => subscribed,
        };
        match subscribed {
            Ok(response) => {
                backoff_ms = FEED_BACKOFF_MIN_MS;
                debug!(node_id = %shared.node_id, after_seq, "following the assignment feed");
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(assignment)) => {
                            backoff_ms = FEED_BACKOFF_MIN_MS;
                            if let Err(error) = record(&shared, &checkpoint, assignment).await {
                                warn!(node_id = %shared.node_id, error = format!("{error:#}"), "cannot persist the feed checkpoint; re-subscribing");
                                break;
                            }
                        }
                        Ok(None) => {
                            debug!(node_id = %shared.node_id, "the assignment feed ended; re-subscribing");
                            break;
                        }
                        Err(status) => {
                            warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), "the assignment feed failed; re-subscribing");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                warn!(node_id = %shared.node_id, code = ?status.code(), message = status.message(), backoff_ms, "cannot subscribe to the assignment feed; retrying")
            }
        }
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(FEED_BACKOFF_MAX_MS);
    }
}

/// Records one assignment and persists the checkpoint after it.
pub(super) async fn record(shared: &Arc<Shared>, checkpoint: &Path, assignment: Assignment) -> anyhow::Result<()> {
    let recorded = shared.assignments.lock().expect("the assignments lock is never poisoned").apply(&assignment);
    if !recorded {
        return Ok(());
    }
    shared.assignment_recorded.notify_waiters();
    if assignment.preview_id.is_empty() {
        debug!(node_id = %shared.node_id, seq = assignment.seq, voucher_id = %assignment.voucher_id, media = assignment.media_ids.len(), "voucher assigned");
    } else {
        debug!(node_id = %shared.node_id, seq = assignment.seq, preview_id = %assignment.preview_id, "preview assigned");
    }
    let path = checkpoint.to_path_buf();
    let seq = assignment.seq;
    tokio::task::spawn_blocking(move || write_checkpoint(&path, seq)).await.context("the checkpoint task failed")?
}

// ---- starting and stopping -----------------------------------------------------------------
