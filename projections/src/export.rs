//! The royalty log as a self-contained file (`audit export --format log`), its offline
//! verification (`audit verify`), and per-delivery inclusion proofs (`audit prove`,
//! `audit check-proof`). An exported log carries entry ciphertexts, chain values and signed
//! seals; it is checked with the royalty master key and the engine's public key alone.

/// The format name written in every exported log.
pub const LOG_FORMAT: &str = "vouchsafe-royalty-log/1";
