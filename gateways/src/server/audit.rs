//! AuditService: a full replay streamed to the auditor, chain verification and totals,
//! bounded by `REPLAYS_IN_FLIGHT_MAX` replays at once.

use super::api::*;
use super::*;
use proto::v1 as pb;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub(super) fn replays_busy() -> Status {
    crate::server::status::replays_busy(REPLAYS_IN_FLIGHT_MAX)
}

pub(super) fn first_bad_text(report: &projections::audit::AuditReport) -> String {
    report.first_bad.as_ref().map(|bad| serde_json::to_string(bad).unwrap_or_else(|_| bad.reason.clone())).unwrap_or_default()
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for Api {
    type ReplayStream = ReceiverStream<Result<pb::ReplayProgress, Status>>;

    async fn replay(&self, request: Request<pb::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        let pin = match request.get_ref().pinned_seal_hash.as_slice() {
            [] => None,
            bytes => match hash32("pinned_seal_hash", bytes) {
                Ok(pin) => Some(pin),
                Err(status) => return self.answer(Err(status)),
            },
        };
        let permit = match Arc::clone(&self.state.replays).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => return self.answer(Err(replays_busy())),
        };
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            let _permit = permit;
            let progress_sender = sender.clone();
            let mut reported = 0u64;
            let report = projections::audit::replay(state.log.as_ref(), &state.royalty_master, &state.engine_public, pin, move |events| {
                if events >= reported + REPLAY_PROGRESS_EVERY_EVENTS {
                    reported = events;
                    // Progress is best effort: a slow reader skips updates, never the result.
                    let _ = progress_sender.try_send(Ok(pb::ReplayProgress { events, ..Default::default() }));
                }
            })
            .await;
            let last = match report {
                Ok(report) => Ok(pb::ReplayProgress {
                    events: report.events,
                    last_seq: report.last_seq,
                    done: true,
                    chain_ok: report.chain_ok,
                    state_digest: hex::decode(&report.state_digest).unwrap_or_default(),
                    first_bad: first_bad_text(&report),
                }),
                Err(error) => Err(crate::server::status::stream_unreadable("the replay", &error)),
            };
            let _ = sender.send(last).await;
        });
        self.answer(Ok(ReceiverStream::new(receiver)))
    }

    async fn verify_chain(&self, _request: Request<pb::VerifyChainRequest>) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let result = async {
            let _permit = Arc::clone(&self.state.replays).try_acquire_owned().map_err(|_| replays_busy())?;
            let report = projections::audit::replay(self.state.log.as_ref(), &self.state.royalty_master, &self.state.engine_public, None, |_| {})
                .await
                .map_err(|error| crate::server::status::stream_unreadable("the replay", &error))?;
            Ok(pb::VerifyChainResponse {
                entries: report.royalty_entries,
                seals_verified: report.seals_verified,
                chain_ok: report.chain_ok,
                first_bad: first_bad_text(&report),
            })
        }
        .await;
        self.answer(result)
    }

    async fn totals(&self, _request: Request<pb::TotalsRequest>) -> Result<Response<pb::TotalsResponse>, Status> {
        let lines = self.state.live.read(|p| {
            p.royalty
                .totals
                .iter()
                .map(|((dimension, key), line)| pb::TotalsLine {
                    dimension: format!("{dimension:?}"),
                    key: key.clone(),
                    deliveries: line.deliveries,
                    previews: line.previews,
                    amount_minor: line.amount_minor,
                    units: line.units,
                    refunds: line.refunds,
                    refunded_minor: line.refunded_minor,
                })
                .collect()
        });
        self.answer(Ok(pb::TotalsResponse { lines }))
    }
}
