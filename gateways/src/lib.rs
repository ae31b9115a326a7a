//! The network edge and the command-line tool's work: backend selection, key files, the
//! demo. `main.rs` only parses arguments and prints; everything it runs lives here, so the
//! end-to-end tests can run it in process.

pub mod audit;
pub mod backend;
pub mod auth;
pub mod bench;
pub mod client;
pub mod commands;
pub mod cred;
pub mod demo;
pub mod dispatcher;
pub mod inspect;
pub mod keys;
pub mod media_store;
pub mod metrics;
pub mod natsd;
pub mod node;
pub mod player;
pub mod progress;
pub mod serve;
pub mod server;
pub mod status;
