//! The network edge and the command-line tool's work, one folder per program:
//! `server/` (the engine's gRPC services, front door and background jobs), `node/` (the
//! delivery node agent), `player/` (the reference consumer), `cli/` (argument parsing and
//! the client subcommands), `demo/`, `bench/`, `audit/` (the auditor's commands), and
//! `common/` (what several programs share: the engine client, credentials, key files,
//! backend selection, the nats-server launcher). `main.rs` only dispatches; everything it
//! runs lives here, so the end-to-end tests can run it in process.
//!
//! Server, node and player never import each other (checked by `replay-tests/tests/tidy.rs`).

pub mod audit;
pub mod bench;
pub mod cli;
pub mod common;
pub mod demo;
pub mod node;
pub mod player;
pub mod server;
pub mod witness;
