//! Issuing vouchers to delivery nodes, and moving them off nodes that no longer serve
//! them (a merchant's reissue, the sweeper's move).

use super::*;
use crate::placement::Placed;

impl Market {
    pub async fn issue(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        voucher_id: &VoucherId,
        region: Option<&str>,
        access_ttl_ms: u64,
    ) -> Result<IssueAnswer, AppError> {
        self.active_merchant(merchant).await?;
        let root = self.merchants_voucher(merchant, voucher_id).await?;
        let by = actor(ActorKind::Merchant, &merchant.0);
        // Issued to a node that no longer serves it (drained, removed, silent), keys never
        // released; or its deliveries failed past the retries: a reissue issues it anew.
        let retries_max = self.retries_max().await?;
        // Issued, or under way on a node that finishes nothing (removed, silent): likewise.
        let standing = match &root.state.node {
            Some(node) => self.standing(node).await?,
            None => voucher::NodeStanding::Serving,
        };
        let status = root.state.status;
        let issued = status == voucher::VoucherStatus::Issued;
        // A rental's keys are out only while a play's release is under way (`keys_out`).
        let gone = !root.state.keys_out() && standing != voucher::NodeStanding::Serving;
        let exhausted = root.state.keys_out() && root.state.delivery_failures > retries_max;
        let dead = standing == voucher::NodeStanding::Dead && status == voucher::VoucherStatus::Redeeming;
        if (issued && (gone || exhausted || standing == voucher::NodeStanding::Dead)) || dead {
            drop(root);
            return self.relocate(Some(merchant), request, voucher_id, region, access_ttl_ms).await;
        }
        // Delivered: the access renewed, so its consumer can recover a lost copy after the
        // window (on another node if the one that delivered it no longer serves).
        if status == voucher::VoucherStatus::Delivered {
            drop(root);
            return self.renew_access(merchant, request, voucher_id, region, access_ttl_ms, standing).await;
        }
        let issue = |placed: Placed| VoucherCommand::Issue { merchant: merchant.clone(), node: placed.node, lease: placed.lease, access_ttl_ms };
        let (placed, held) = match &root.state.node {
            // Already issued: the retry is answered (or another request refused) by decide.
            Some(node) => (Placed { node: node.clone(), lease: 0 }, false),
            None => {
                self.refused_before_placing(&voucher_id.0, &root, &by, request, &issue(Placed::probe())).await?;
                (self.place(region, &voucher_id.0).await?, true)
            }
        };
        // The handler builds the next state in place when it holds the only reference.
        drop(root);
        let command = issue(placed);
        let result = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &command).await.map_err(|error| naming(error, &voucher_id.0));
        if held && result.as_ref().map_or(true, |handled| handled.appended.is_empty()) {
            self.allocator.cancel(&voucher_id.0);
        }
        self.issue_answer(voucher_id, &result?.root.state)
    }

    /// Moves an issued voucher whose keys never went out off a node that no longer serves it
    /// (`Allocator::serves`) to a new choice: by its merchant (a reissue) or, with
    /// `merchant` None, by the engine's sweeper. A new node and access token; the receipt
    /// stays, and the old node's tokens stop working.
    pub async fn relocate(
        &self,
        merchant: Option<&MerchantId>,
        request: &RequestId,
        voucher_id: &VoucherId,
        region: Option<&str>,
        access_ttl_ms: u64,
    ) -> Result<IssueAnswer, AppError> {
        let by = merchant.map_or_else(Actor::engine, |merchant| actor(ActorKind::Merchant, &merchant.0));
        let root = self.voucher_of(voucher_id).await?;
        let leaving = root.state.node.clone();
        let old_node = match &root.state.node {
            Some(node) => self.standing(node).await?,
            None => voucher::NodeStanding::Serving,
        };
        let retries_max = self.retries_max().await?;
        let move_to =
            |placed: Placed| VoucherCommand::Move { merchant: merchant.cloned(), node: placed.node, lease: placed.lease, access_ttl_ms, old_node, retries_max };
        // The probe's node is not the one it leaves, so only the voucher's own state refuses.
        self.refused_before_placing(&voucher_id.0, &root, &by, request, &move_to(Placed::probe())).await?;
        drop(root);
        let placed = self.place(region, &voucher_id.0).await?;
        let command = move_to(placed);
        let result = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &command).await.map_err(|error| naming(error, &voucher_id.0));
        if result.as_ref().map_or(true, |handled| handled.appended.is_empty()) {
            self.allocator.cancel(&voucher_id.0);
        }
        if let Err(AppError::Rejected(_)) = &result {
            // Moved meanwhile by another (the sweeper, another engine) to a node that
            // serves: the answer is where it is now, as for a reissue of an issued voucher.
            let now = self.voucher_of(voucher_id).await?;
            if let Some(node) = now.state.node.as_ref().filter(|node| Some(*node) != leaving.as_ref())
                && now.state.status == voucher::VoucherStatus::Issued
                && self.allocator.serves(node)
            {
                return self.issue_answer(voucher_id, &now.state);
            }
        }
        self.issue_answer(voucher_id, &result?.root.state)
    }

    /// Moves, as the engine, the vouchers stranded on nodes that no longer serve them
    /// (`stranded`: the projections' list); one request per voucher and old node, so two
    /// sweepers move each once. How many moved.
    pub async fn relocate_stranded(&self, stranded: &[(VoucherId, NodeId)], access_ttl_ms: u64) -> Result<usize, AppError> {
        let mut moved = 0;
        for (voucher_id, old_node) in stranded {
            let request = RequestId(format!("move-{}-{}", voucher_id.0, old_node.0));
            match self.relocate(None, &request, voucher_id, None, access_ttl_ms).await {
                Ok(_) => moved += 1,
                Err(AppError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(moved)
    }

    /// Renews a delivered voucher's access (`VoucherCommand::RenewAccess`): on the node that
    /// delivered it while that serves, else on a new choice (its slot hold given back at
    /// once: a recovery holds no slot).
    async fn renew_access(
        &self,
        merchant: &MerchantId,
        request: &RequestId,
        voucher_id: &VoucherId,
        region: Option<&str>,
        access_ttl_ms: u64,
        old_node: voucher::NodeStanding,
    ) -> Result<IssueAnswer, AppError> {
        let current = self.voucher_of(voucher_id).await?.state.node.clone().ok_or(Rejection::NoNodeAvailable)?;
        let node = if old_node == voucher::NodeStanding::Serving {
            current
        } else {
            let chosen = self.place(region, &voucher_id.0).await;
            self.allocator.cancel(&voucher_id.0);
            chosen?.node
        };
        let recoveries_max = recoveries_max_of(&self.config().await?);
        let command = VoucherCommand::RenewAccess { merchant: merchant.clone(), node, access_ttl_ms, old_node, recoveries_max };
        let by = actor(ActorKind::Merchant, &merchant.0);
        let handled = self.handler.handle::<Voucher>(&voucher_id.0, &by, request, &command).await?;
        self.issue_answer(voucher_id, &handled.root.state)
    }

    /// How the node a voucher sits on stands: serving; drained (finishes what it
    /// started); or removed or silent (finishes nothing).
    pub(crate) async fn standing(&self, node: &NodeId) -> Result<voucher::NodeStanding, AppError> {
        if self.allocator.serves(node) {
            return Ok(voucher::NodeStanding::Serving);
        }
        let removed = self.handler.load::<Node>(&node.0).await?.state.status == NodeStatus::Removed;
        Ok(if removed || self.allocator.silent(node) { voucher::NodeStanding::Dead } else { voucher::NodeStanding::Gone })
    }

    fn issue_answer(&self, voucher_id: &VoucherId, state: &Voucher) -> Result<IssueAnswer, AppError> {
        let node_id = state.node.clone().ok_or(Rejection::NoNodeAvailable)?;
        let media_ids = state.media_ids();
        let media_refs: Vec<&str> = media_ids.iter().map(|m| m.0.as_str()).collect();
        let keys = self.keys();
        let token_key_id = keys.token_key_id();
        let node_key = crypto::node_access_key(&keys.token_key(token_key_id)?, &node_id.0);
        let access_token = crypto::access_token(&node_key, &node_id.0, &voucher_id.0, &media_refs, state.access_expires_at.0);
        Ok(IssueAnswer {
            voucher_id: voucher_id.clone(),
            node_id,
            access_token,
            token_key_id,
            access_expires_at: state.access_expires_at,
            media_ids,
            rental_until: state.rental_until,
        })
    }
}
