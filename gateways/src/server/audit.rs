//! AuditService: a full replay streamed to the auditor, chain verification, totals with
//! the royalty log's seals, and a rights holder's statement from a verified replay; the
//! replays bounded by `REPLAYS_IN_FLIGHT_MAX` at once.

use super::api::*;
use super::*;
use engine::domain::report::Report;
use engine::domain::validate;
use projections::statement::{HOLDER_NAME_CHARS_MAX, Holder, StatementError};
use proto::v1 as pb;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub(super) fn replays_busy() -> Status {
    crate::server::status::replays_busy(REPLAYS_IN_FLIGHT_MAX)
}

/// Seals a Totals answer lists, newest first.
pub const NEWEST_SEALS_MAX: usize = 20;

pub(super) fn totals_line(dimension: &str, key: &str, line: &projections::royalty_log::TotalsLine) -> pb::TotalsLine {
    pb::TotalsLine {
        dimension: dimension.to_string(),
        key: key.to_string(),
        deliveries: line.deliveries,
        previews: line.previews,
        amount_minor: line.amount_minor,
        units: line.units,
        refunds: line.refunds,
        refunded_minor: line.refunded_minor,
    }
}

fn statement_request(message: &pb::RightsStatementRequest) -> Result<(Holder, String, String), Status> {
    let holder = Holder::of_name(&message.holder).ok_or_else(|| invalid("holder", "must be owner, artist or rights_agent"))?;
    validate::text("name", &message.name, HOLDER_NAME_CHARS_MAX).map_err(|r| crate::server::status::from_rejection(&r))?;
    if !projections::reads::is_period(&message.period) {
        return Err(invalid("period", "must be a calendar month, YYYY-MM"));
    }
    Ok((holder, message.name.clone(), message.period.clone()))
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
        let Some(master) = self.state.royalty_master.clone() else {
            return self.answer(Err(crate::server::status::royalty_master_with_the_auditor("a replay")));
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
            let keys = state.market.keys();
            let options = projections::audit::AuditOptions { pin, older_engine_keys: keys.set.iter().skip(1).cloned().collect(), ..Default::default() };
            let report = projections::audit::replay_with(state.log.as_ref(), &master, &keys.public, options, move |events| {
                if events >= reported + REPLAY_PROGRESS_EVERY_EVENTS {
                    reported = events;
                    // Progress is best effort: a slow reader skips updates, never the result.
                    let _ = progress_sender.try_send(Ok(pb::ReplayProgress { events, ..Default::default() }));
                }
            })
            .await
            .map(|(report, _)| report);
            let last = match report {
                Ok(report) => Ok(pb::ReplayProgress {
                    events: report.events,
                    last_seq: report.last_seq,
                    done: true,
                    chain_ok: report.chain_ok,
                    state_digest: hex::decode(&report.state_digest).unwrap_or_default(),
                    first_bad: first_bad_text(&report),
                    first_seq: report.first_seq,
                    royalty_entries: report.royalty_entries,
                    seals_verified: report.seals_verified,
                    unsealed_entries: report.unsealed_entries,
                    totals: report
                        .totals
                        .iter()
                        .flat_map(|(dimension, lines)| lines.iter().map(move |(key, line)| totals_line(dimension, key, line)))
                        .collect(),
                    events_per_s: report.events_per_s,
                }),
                Err(error) => Err(crate::server::status::stream_unreadable("the replay", &error)),
            };
            let _ = sender.send(last).await;
        });
        self.answer(Ok(ReceiverStream::new(receiver)))
    }

    async fn verify_chain(&self, _request: Request<pb::VerifyChainRequest>) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let result = async {
            let master = self.state.royalty_master.as_ref().ok_or_else(|| crate::server::status::royalty_master_with_the_auditor("a chain verification"))?;
            let _permit = Arc::clone(&self.state.replays).try_acquire_owned().map_err(|_| replays_busy())?;
            let keys = self.market().keys();
            let options = projections::audit::AuditOptions { older_engine_keys: keys.set.iter().skip(1).cloned().collect(), ..Default::default() };
            let (report, _) = projections::audit::replay_with(self.state.log.as_ref(), master, &keys.public, options, |_| {})
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
        self.answer(Ok(self.totals_now()))
    }

    async fn statement(&self, request: Request<pb::RightsStatementRequest>) -> Result<Response<pb::RightsStatementResponse>, Status> {
        let result = async {
            let (holder, name, period) = statement_request(request.get_ref())?;
            self.rights_statement(holder, &name, &period).await
        }
        .await;
        self.answer(result)
    }
}

impl Api {
    /// The totals and the royalty log's seals as the live projections hold them now.
    pub(super) fn totals_now(&self) -> pb::TotalsResponse {
        self.state.live.read(|p| {
            let royalty = &p.royalty;
            let newest_seals = royalty
                .seals
                .iter()
                .enumerate()
                .rev()
                .take(NEWEST_SEALS_MAX)
                .map(|(index, seal)| pb::SealView {
                    index: index as u64,
                    seal_hash: Report::seal_hash(seal).to_vec(),
                    sealed_at_ms: royalty.seal_times.get(index).copied().unwrap_or(0),
                    first_entry: seal.first_entry,
                    last_entry: seal.last_entry,
                    last_stream_seq: seal.last_stream_seq,
                    checkpoint_note: seal
                        .checkpoint
                        .as_ref()
                        .map(|c| engine::note::Checkpoint { origin: c.origin.clone(), size: c.tree_size, root: c.root }.note(&c.origin, &c.signature))
                        .unwrap_or_default(),
                })
                .collect();
            pb::TotalsResponse {
                lines: royalty.totals.iter().map(|((dimension, key), line)| totals_line(&format!("{dimension:?}"), key, line)).collect(),
                royalty_entries: royalty.entries.len() as u64,
                seals: royalty.seals.len() as u64,
                seals_verified: royalty.seals_verified,
                seal_faults: royalty.seal_faults.len() as u64,
                newest_seals,
            }
        })
    }

    /// A holder's month from a full replay of the stream, verified first (one of the
    /// `REPLAYS_IN_FLIGHT_MAX` replays).
    pub(super) async fn rights_statement(&self, holder: Holder, name: &str, period: &str) -> Result<pb::RightsStatementResponse, Status> {
        let master = self.state.royalty_master.as_ref().ok_or_else(|| crate::server::status::royalty_master_with_the_auditor("a rights statement"))?;
        let _permit = Arc::clone(&self.state.replays).try_acquire_owned().map_err(|_| replays_busy())?;
        let (report, statement) =
            projections::statement::verified_statement(self.state.log.as_ref(), master, &self.market().keys().set, holder, name, period, |_| {})
                .await
                .map_err(|error| match error {
                    StatementError::Audit(error) => crate::server::status::stream_unreadable("the replay", &error),
                    StatementError::NotClean { seq, .. } => crate::server::status::stream_not_clean(seq),
                    StatementError::Entries { entry, reason } => crate::server::status::royalty_log_unopened(entry, &reason),
                })?;
        Ok(pb::RightsStatementResponse {
            holder: holder.name().into(),
            name: statement.name.clone(),
            period: statement.period.clone(),
            total: Some(totals_line(holder.name(), &statement.name, &statement.total)),
            currencies: statement.currencies,
            media: statement
                .media
                .iter()
                .map(|media| pb::StatementMediaLine {
                    media_id: media.media_id.clone(),
                    title: media.title.clone(),
                    artist: media.artist.clone(),
                    line: Some(totals_line("media", &media.media_id, &media.line)),
                })
                .collect(),
            events: report.events,
            last_seq: report.last_seq,
            state_digest: hex::decode(&report.state_digest).unwrap_or_default(),
            seals_verified: report.seals_verified,
        })
    }
}
