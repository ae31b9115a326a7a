//! Slot leases (`SlotsLeased` on a node's subject): how this engine gets the share of a
//! node's slots it gives out, keeps it, gives back what it does not use, and takes over
//! the share of an engine that stopped renewing (`placement::LeaseTerms`). The node
//! aggregate's OCC orders every lease of a node, so leases never sum past its slots;
//! the allocation projection gives out a slot only from a lease this engine holds. An
//! engine that finds a node's slots all leased by others asks for its fair share
//! (`SlotsWanted`), and the others give it back as their slots come back.

use super::*;
use crate::placement::{LEASE_TERMS, LeaseChange, LeaseWish, Order, Placed};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many leases one placement asks for before it answers NoNodeAvailable.
const LEASE_ATTEMPTS_MAX: usize = 3;

/// How long a placement waits for the share it asked for (`SlotsWanted`) before it places
/// where this engine has slots (`Order::Leased`): the other engines give it back as soon as
/// they apply the want, a few milliseconds; an engine that does not is gone or stuck.
const SHARE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a placement waits for this engine's allocation to apply the stream's head.
const CATCH_UP_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Makes each lease request id of this process distinct (with the holder, which is
/// distinct per engine).
static LEASE_REQUESTS: AtomicU64 = AtomicU64::new(0);

impl Market {
    /// A sale's placement (`Allocator::choose`) for `holder` (a voucher id), leasing slots
    /// first when this engine's leases have none left.
    pub(crate) async fn place(&self, region: Option<&str>, holder: &str) -> Result<Placed, AppError> {
        self.place_with(region, None, &|order| self.allocator.choose_in(order, region, holder)).await
    }

    /// As `place`, for a preview of `merchant` (`Allocator::choose_preview`).
    pub(crate) async fn place_preview(&self, region: Option<&str>, holder: &str, merchant: &MerchantId) -> Result<Option<Placed>, AppError> {
        match self.place_with(region, Some(merchant), &|order| self.allocator.choose_preview_in(order, region, holder, merchant)).await {
            Ok(placed) => Ok(Some(placed)),
            Err(AppError::Rejected(Rejection::NoNodeAvailable)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Places as one engine alone would (`Order::Load`: the least loaded node with a free
    /// slot, leasing there or asking the engines that lease its free slots for a share and
    /// waiting for it), else where this engine has or can lease a slot (`Order::Leased`).
    async fn place_with(
        &self,
        region: Option<&str>,
        merchant: Option<&MerchantId>,
        choose: &(dyn Fn(Order) -> Option<Placed> + Sync),
    ) -> Result<Placed, AppError> {
        // Other engines' placements of a moment ago count in the loads: as one engine's own.
        // (An engine placing by its own view, without leases, does not look: the test
        // switch `slot_leases` off shows what leases prevent.)
        if self.handler.others_append() && self.allocator.lease_holder().is_some() {
            self.caught_up_with_the_stream().await;
        }
        if let Some(placed) = choose(Order::Load) {
            return Ok(placed);
        }
        // A slot that came back a moment ago (this engine's own append) is free again.
        self.caught_up_with_the_stream().await;
        for order in [Order::Load, Order::Leased] {
            if let Some(placed) = self.place_in(order, region, merchant, choose).await? {
                return Ok(placed);
            }
        }
        Err(Rejection::NoNodeAvailable.into())
    }

    async fn place_in(
        &self,
        order: Order,
        region: Option<&str>,
        merchant: Option<&MerchantId>,
        choose: &(dyn Fn(Order) -> Option<Placed> + Sync),
    ) -> Result<Option<Placed>, AppError> {
        let deadline = tokio::time::Instant::now() + SHARE_WAIT_MAX;
        let mut changes = self.allocator.lease_changes();
        for _ in 0..LEASE_ATTEMPTS_MAX {
            let wish = {
                // One lease change at a time: a placement that waited for another's growth
                // places from it; the lease keeper does not shrink a growth before its use.
                let _leasing = self.leasing.lock().await;
                if let Some(placed) = choose(order) {
                    return Ok(Some(placed));
                }
                let Some(wish) = self.allocator.lease_wish(order, region, merchant) else { return Ok(None) };
                match self.lease(&wish).await {
                    // Another engine leased the slots first, or took the lease over: look again.
                    Ok(()) | Err(AppError::Rejected(_)) => {}
                    Err(error) => return Err(error),
                }
                if let Some(placed) = choose(order) {
                    return Ok(Some(placed));
                }
                wish
            };
            if wish.change == LeaseChange::Want && !self.share_came(order, region, merchant, changes.as_mut(), deadline).await {
                return Ok(None);
            }
        }
        Ok(choose(order))
    }

    /// After asking for a share: waits (till `deadline`) until the engines holding the
    /// free slots gave some back, so that this engine can place or lease (its lease keeper,
    /// `keep_leases_as_they_change`, does it as it applies the want); false when they did not.
    async fn share_came(
        &self,
        order: Order,
        region: Option<&str>,
        merchant: Option<&MerchantId>,
        changes: Option<&mut tokio::sync::watch::Receiver<u64>>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let Some(changes) = changes else { return false };
        loop {
            if !matches!(tokio::time::timeout_at(deadline, changes.changed()).await, Ok(Ok(()))) {
                return false;
            }
            if self.allocator.lease_wish(order, region, merchant).is_none_or(|wish| wish.change != LeaseChange::Want) {
                return true;
            }
        }
    }

    /// Waits (at most `CATCH_UP_MAX`) until this engine's allocation applied the stream up
    /// to its head, so that it places on the loads of the whole stream: slots that came
    /// back a moment ago, other engines' placements. Advice only (leases keep the slots
    /// exact): a head not read or not reached in time places on what is applied.
    async fn caught_up_with_the_stream(&self) {
        let Some(mut applied) = self.allocator.applied() else { return };
        let head = match self.handler.log().last_seq().await {
            Ok(head) => head,
            Err(error) => {
                tracing::debug!(%error, "reading the stream head before placing failed; placing on what is applied");
                return;
            }
        };
        let _ = tokio::time::timeout(CATCH_UP_MAX, applied.wait_for(|seq| *seq >= head)).await;
    }

    /// Decides `command` on aggregate `id` (with `Placed::probe()`'s node) without
    /// appending: a command refused whatever the node is refused before a slot is sought,
    /// so a refusal never leaves a lease appended behind it. A refusal decided on state
    /// older than the subject's head (another engine appended a moment ago) is decided
    /// again on the newest (`Handler::refreshed`), as `Handler::handle` does.
    pub(crate) async fn refused_before_placing<A: Aggregate>(
        &self,
        id: &str,
        root: &Root<A>,
        by: &Actor,
        request: &RequestId,
        command: &A::Command,
    ) -> Result<(), AppError> {
        let refused = match root.decide(by, request, command, self.now()) {
            Ok(_) => return Ok(()),
            Err(rejection) => rejection,
        };
        match self.handler.refreshed::<A>(id, root.last_seq).await? {
            Some(newer) => newer.decide(by, request, command, self.now()).map(|_| ()).map_err(AppError::from),
            None => Err(refused.into()),
        }
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
        self.keep_leases_of(false).await
    }

    /// As `keep_leases`; with `asked_only` only on nodes where another engine asks for a
    /// share (`Allocator::lease_upkeep`).
    async fn keep_leases_of(&self, asked_only: bool) -> Result<usize, AppError> {
        // Not between a placement's growth and its use of it.
        let _leasing = self.leasing.lock().await;
        let mut changed = 0;
        for wish in self.allocator.lease_upkeep(asked_only) {
            match self.lease(&wish).await {
                Ok(()) => changed += 1,
                Err(AppError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(changed)
    }

    /// Each time the allocation's leases or wants change, or a slot comes back where an
    /// engine asks for a share (`Allocator::lease_changes`), gives back what this engine
    /// does not use on the nodes where another engine asks for a share: at once rather
    /// than at the next sweep (which keeps renewals, take-overs and the rest). Returns when
    /// the allocation stops telling (or has no leases).
    pub async fn keep_leases_as_they_change(&self) {
        let Some(mut changes) = self.allocator.lease_changes() else { return };
        while changes.changed().await.is_ok() {
            if let Err(error) = self.keep_leases_of(true).await {
                tracing::warn!(%error, "looking after the slot leases failed; again at the next change or sweep");
            }
        }
    }
}
