//! Node health shared between the engines on one stream (`EventLog::gossip`): each
//! announcement and heartbeat a node sends to one engine reaches the others, so their
//! placement and their moves off silent nodes agree. At most once and never recorded: a
//! lost message is made good by the node's next heartbeat, so the engines' views of a
//! node differ by at most one heartbeat interval plus the network's delay.

use super::EngineState;
use engine::ids::NodeId;
use engine::placement::Heartbeat;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The gossip topic of node health.
const TOPIC: &str = "health";
/// The longest wait before listening again after the gossip connection failed.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What one engine heard from a node: where it serves and its last heartbeat.
#[derive(Serialize, Deserialize)]
struct NodeHeard {
    engine: String,
    node: String,
    endpoint: String,
    slots_in_use: u32,
    cache_items: u64,
    cache_accesses: u64,
    cache_misses: u64,
}

/// Tells the other engines that `node` announced itself or beat (`beat`); a failure to
/// tell is logged (the next heartbeat tells again).
pub(super) async fn tell(state: &EngineState, node: &NodeId, beat: Heartbeat) {
    let Some(gossip) = state.log.gossip() else { return };
    let Some(endpoint) = state.nodes.endpoint(node) else { return };
    let heard = NodeHeard {
        engine: state.engine_id.clone(),
        node: node.0.clone(),
        endpoint,
        slots_in_use: beat.slots_in_use,
        cache_items: beat.cache_items,
        cache_accesses: beat.cache_accesses,
        cache_misses: beat.cache_misses,
    };
    let payload = match serde_json::to_vec(&heard) {
        Ok(payload) => payload,
        Err(error) => return tracing::warn!(%error, "cannot encode node health"),
    };
    if let Err(error) = gossip.publish(TOPIC, payload).await {
        tracing::warn!(%error, node = %node.0, "cannot tell the other engines of a node's heartbeat");
    }
}

/// Listens for what the other engines heard from nodes and records it in this engine's
/// health view, until shutdown; reconnects after a failure.
pub(super) async fn listen(state: Arc<EngineState>) {
    let Some(gossip) = state.log.gossip() else { return };
    let mut shutdown = state.shutdown.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut heard = match gossip.listen(TOPIC).await {
            Ok(heard) => heard,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for node health from the other engines; retrying");
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let payload = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                payload = heard.next() => payload,
            };
            let Some(payload) = payload else { break };
            let Ok(message) = serde_json::from_slice::<NodeHeard>(&payload) else {
                tracing::warn!(bytes = payload.len(), "undecodable node health from another engine; ignored");
                continue;
            };
            if message.engine == state.engine_id || !engine::ids::is_valid_token(&message.node) {
                continue;
            }
            let beat = Heartbeat {
                slots_in_use: message.slots_in_use,
                cache_items: message.cache_items,
                cache_accesses: message.cache_accesses,
                cache_misses: message.cache_misses,
            };
            state.nodes.hear(&NodeId(message.node), &message.endpoint, beat);
        }
    }
}
