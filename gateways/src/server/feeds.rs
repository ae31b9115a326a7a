//! The assignment feeds (SubscribeAssignments) open at once: each reads the whole stream,
//! so they are bounded (`Limits::assignment_feeds_max`), and a node has at most one: a new
//! subscription of the same node ends the old one, which a restarted node agent would
//! otherwise leave behind until its TCP connection times out.

use engine::ids::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long a node's new feed waits for its replaced feed to end and free its slot.
pub const FEED_REPLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct AssignmentFeeds {
    slots: Arc<Semaphore>,
    /// The live feed of each node: its number and the signal that ends it.
    live: Mutex<HashMap<NodeId, (u64, watch::Sender<bool>)>>,
    next: AtomicU64,
}

/// Why a feed could not open.
#[derive(Debug, PartialEq, Eq)]
pub struct FeedsFull {
    pub feeds_max: usize,
}

/// An open feed: holds its slot, ends when `replaced` turns true, and forgets itself when
/// dropped (unless a newer feed of the node took its place).
pub struct Feed {
    pub replaced: watch::Receiver<bool>,
    number: u64,
    node: NodeId,
    feeds: Arc<AssignmentFeeds>,
    _slot: OwnedSemaphorePermit,
}

impl AssignmentFeeds {
    pub fn new(feeds_max: usize) -> Arc<Self> {
        Arc::new(Self { slots: Arc::new(Semaphore::new(feeds_max)), live: Mutex::new(HashMap::new()), next: AtomicU64::new(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (u64, watch::Sender<bool>)>> {
        self.live.lock().expect("the feeds lock is never poisoned")
    }

    /// Opens `node`'s feed, ending the one it had. A node replacing its own feed needs no
    /// new slot: it waits (at most `FEED_REPLACE_WAIT`) for the old feed to give its slot back.
    pub async fn open(self: &Arc<Self>, node: &NodeId, feeds_max: usize) -> Result<Feed, FeedsFull> {
        let replacing = match self.lock().remove(node) {
            Some((_, old)) => {
                let _ = old.send(true);
                true
            }
            None => false,
        };
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if replacing => tokio::time::timeout(FEED_REPLACE_WAIT, Arc::clone(&self.slots).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(FeedsFull { feeds_max })?,
            Err(_) => return Err(FeedsFull { feeds_max }),
        };
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (signal, replaced) = watch::channel(false);
        if let Some((_, older)) = self.lock().insert(node.clone(), (number, signal)) {
            // Two subscriptions of one node racing: the later one wins.
            let _ = older.send(true);
        }
        Ok(Feed { replaced, number, node: node.clone(), feeds: Arc::clone(self), _slot: slot })
    }

    /// Feeds open now.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let mut live = self.feeds.lock();
        if live.get(&self.node).is_some_and(|(number, _)| *number == self.number) {
            live.remove(&self.node);
        }
    }
}
