//! Vouchsafe engine: the pure domain core, the one crypto module, the one wire module and
//! the event log abstraction with its backends.

pub mod app;
pub mod batch_signer;
pub mod clock;
pub mod cosignature;
pub mod crypto;
pub mod domain;
pub mod handler;
pub mod ids;
pub mod keyset;
pub mod log;
pub mod media;
pub mod media_store;
pub mod merkle;
pub mod note;
pub mod panic;
pub mod placement;
pub mod seal;
pub mod spend;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tiles;
pub mod tlog;
pub mod token_keys;
pub mod wire;
pub mod witness;
