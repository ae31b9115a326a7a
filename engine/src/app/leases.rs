//! Slot leases (`SlotsLeased` on a node's subject): how this engine gets the share of a
//! node's slots it gives out, keeps it, gives back what it does not use, and takes over
//! the share of an engine that stopped renewing (`placement::LeaseTerms`). The node
//! aggregate's OCC orders every lease of a node, so leases never sum past its slots;
//! the allocation projection gives out a slot only from a lease this engine holds. An
//! engine that finds a node's slots all leased by others asks for its fair share
//! (`SlotsWanted`), and the others give it back as their slots come back.

use super::*;
use crate::placement::{LEASE_TERMS, LeaseChange, LeaseWish, Placed};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many leases one placement asks for before it answers NoNodeAvailable.
const LEASE_ATTEMPTS_MAX: usize = 3;

/// Makes each lease request id of this process distinct (with the holder, which is
/// distinct per engine).
static LEASE_REQUESTS: AtomicU64 = AtomicU64::new(0);

impl Market {
    /// A sale's placement (`Allocator::choose`) for `holder` (a voucher id), leasing slots
    /// first when this engine's leases have none left.
    pub(crate) async fn place(&self, region: Option<&str>, holder: &str) -> Result<Placed, AppError> {
        self.place_with(region, None, &|| self.allocator.choose(region, holder)).await
    }

    /// As `place`, for a preview of `merchant` (`Allocator::choose_preview`).
    pub(crate) async fn place_preview(&self, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Result<Option<Placed>, AppError> {
        match self.place_with(region, Some(merchant), &|| self.allocator.choose_preview(region, holder, merchant)).await {
            Ok(placed) => Ok(Some(placed)),
            Err(AppError::Rejected(Rejection::NoNodeAvailable)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn place_with(&self, region: Option<&str>, merchant: Option<&MerchantId>, choose: &(dyn Fn() -> Option<Placed> + Sync)) -> Result<Placed, AppError> {
        for _ in 0..LEASE_ATTEMPTS_MAX {
            if let Some(placed) = choose() {
                return Ok(placed);
            }
            // One lease change at a time: a placement that waited for another's growth
            // places from it.
            let _leasing = self.leasing.lock().await;
            if let Some(placed) = choose() {
                return Ok(placed);
            }
            let Some(wish) = self.allocator.lease_wish(region, merchant) else { break };
            match self.lease(&wish).await {
                // Another engine leased the slots first, or took the lease over: look again.
                Ok(()) | Err(AppError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
            // Asked for a share: the other engines give it back as their slots come back.
            if wish.change == LeaseChange::Want {
                break;
            }
        }
        choose().ok_or_else(|| Rejection::NoNodeAvailable.into())
    }

    /// Decides `command` (with `Placed::probe()`'s node) without appending: a command
    /// refused whatever the node is refused before a slot is sought, so a refusal never
    /// leaves a lease appended behind it.
    pub(crate) fn refused_before_placing<A: Aggregate>(&self, root: &Root<A>, by: &Actor, request: &RequestId, command: &A::Command) -> Result<(), AppError> {
        root.decide(by, request, command, self.now()).map(|_| ()).map_err(AppError::from)
    }

    /// Appends what `wish` asks (a lease created, resized, renewed, given back or taken
    /// over) and lets the allocator place from it at once.
    async fn lease(&self, wish: &LeaseWish) -> Result<(), AppError> {
        let Some(holder) = self.allocator.lease_holder() else { return Ok(()) };
        let (lease, ttl_ms) = (wish.lease, LEASE_TERMS.ttl_ms);
        let command = match (wish.change, lease) {
            (LeaseChange::TakeOver, Some(lease)) => NodeCommand::TakeOver { lease, holder: holder.clone(), ttl_ms, grace_ms: LEASE_TERMS.grace_ms },
            (LeaseChange::TakeOver, None) => return Ok(()),
            (LeaseChange::Grow(by), lease) => NodeCommand::Grow { lease, holder: holder.clone(), by, ttl_ms },
            (LeaseChange::Set(slots), lease) => NodeCommand::Lease { lease, holder: holder.clone(), slots, ttl_ms },
            (LeaseChange::Want, _) => NodeCommand::Want { holder: holder.clone(), ttl_ms: LEASE_TERMS.want_ms },
        };
        let count = LEASE_REQUESTS.fetch_add(1, Ordering::Relaxed);
        let request = RequestId(format!("lease-{holder}-{}-{count}", self.handler.clock().now().0));
        let handled = self.handler.handle::<Node>(&wish.node.0, &Actor::engine(), &request, &command).await?;
        if wish.change == LeaseChange::Want {
            return Ok(());
        }
        // Growth is placed from at once; what was given back needs no haste.
        let lease = wish.lease.or(handled.root.state.next_lease.checked_sub(1));
        if let (Some(seq), Some((lease, held))) =
            (handled.appended.last(), lease.and_then(|lease| handled.root.state.leases.get(&lease).map(|held| (lease, held))))
        {
            self.allocator.note_lease(&wish.node, lease, held.slots, held.until, *seq);
        }
        Ok(())
    }

    /// The sweeper's care of the slot leases (`Allocator::lease_upkeep`): renews this
    /// engine's, shrinks or gives back what it does not use, takes over those of engines
    /// that stopped renewing. How many changed; a race lost to another engine is no error.
    pub async fn keep_leases(&self) -> Result<usize, AppError> {
        let mut changed = 0;
        for wish in self.allocator.lease_upkeep() {
            match self.lease(&wish).await {
                Ok(()) => changed += 1,
                Err(AppError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(changed)
    }
}
