//! The domain's rules as given/when/then cases (one file per aggregate family, all through
//! `testing::check`), the envelope's idempotency, and a proptest state-machine model of the
//! voucher lifecycle with a shared points account.

mod account_rules;
mod after_sale_rules;
mod config_report_rules;
mod fixtures;
mod lease_rules;
mod lifecycle_model;
mod order_preview_rules;
mod party_rules;
mod rental_rules;
mod root_rules;
mod voucher_rules;
