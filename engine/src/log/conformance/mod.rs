//! The `EventLog` conformance suite: one async function per promise of the contract in
//! `crate::log`, written against the trait only, so every backend (embedded here,
//! JetStream in the replay tests against a real nats-server) runs the very same checks.
//!
//! A backend supplies a [`Harness`] and expands [`conformance_tests!`](crate::conformance_tests)
//! with it, which generates one `#[tokio::test]` per case (the calling crate needs tokio
//! with the `macros` and `rt-multi-thread` features). What does not live here: checks of
//! one backend's internals (batching, on-disk corruption, crash recovery); those sit next to
//! the backend.
//!
//! Every case panics with a message naming the broken promise; waits are bounded, so a
//! backend that stalls fails instead of hanging the test run.
//!
//! The cases sit in files by theme (`appends`, `dedupe`, `reads`, `follow`, `concurrency`,
//! `reopen`), sharing `support`; each case is re-exported here, where the macro names it
//! (`crate::log::conformance::<case>`).

use super::EventLog;
use std::sync::Arc;

mod appends;
mod concurrency;
mod dedupe;
mod follow;
mod reads;
mod reopen;
mod support;

pub use self::appends::{
    conflict_stores_nothing, expected_any_always_appends, expected_empty_succeeds_on_empty_subject_and_conflicts_otherwise,
    expected_last_seq_right_succeeds_wrong_conflicts, invalid_subject_rejected_and_nothing_stored, oversized_payload_rejected_and_nothing_stored,
    sequences_start_at_one_and_are_contiguous,
};
pub use self::concurrency::{concurrent_appenders_get_distinct_contiguous_sequences, racing_duplicates_store_once, racing_expectations_admit_exactly_one};
pub use self::dedupe::{dedupe_precedes_expectation, duplicate_does_not_break_next_expected_append, duplicate_returns_original_seq_and_stores_nothing};
pub use self::follow::{follow_from_start_sees_existing_and_new_events, follow_from_the_middle};
pub use self::reads::{
    last_seq_tracks_appends, read_from_respects_from_and_limit, read_subject_reads_long_and_large_subjects_whole,
    read_subject_returns_only_that_subject_in_order,
};
pub use self::reopen::reopen_preserves_events_and_continues_sequence;

/// Creates and reopens logs for the suite.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new, empty log.
    async fn fresh(&self) -> Arc<dyn EventLog>;
    /// Drop `log` and open the same storage again (all acknowledged events must be there).
    async fn reopen(&self, log: Arc<dyn EventLog>) -> Arc<dyn EventLog>;
}

/// Expands to one `#[tokio::test]` per conformance case, each running the case against
/// `$harness` (an expression evaluated afresh for every test, whose type implements
/// `Harness`).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            sequences_start_at_one_and_are_contiguous,
            expected_empty_succeeds_on_empty_subject_and_conflicts_otherwise,
            expected_last_seq_right_succeeds_wrong_conflicts,
            conflict_stores_nothing,
            expected_any_always_appends,
            duplicate_returns_original_seq_and_stores_nothing,
            dedupe_precedes_expectation,
            duplicate_does_not_break_next_expected_append,
            read_subject_returns_only_that_subject_in_order,
            read_subject_reads_long_and_large_subjects_whole,
            read_from_respects_from_and_limit,
            last_seq_tracks_appends,
            follow_from_start_sees_existing_and_new_events,
            follow_from_the_middle,
            concurrent_appenders_get_distinct_contiguous_sequences,
            racing_expectations_admit_exactly_one,
            racing_duplicates_store_once,
            reopen_preserves_events_and_continues_sequence,
            invalid_subject_rejected_and_nothing_stored,
            oversized_payload_rejected_and_nothing_stored,
        );
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::log::conformance::$case(&$harness).await;
            }
        )+
    };
}
