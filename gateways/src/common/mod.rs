//! What several programs share: the engine's gRPC client (`client`), credential files and
//! their gRPC metadata (`cred`), key files (`keys`), backend selection (`backend`), the
//! nats-server launcher for tests and the bench (`natsd`), progress bars (`progress`), the
//! seal witness file the sealer writes and auditors pin (`witness`), the chunked transfer
//! nodes and players share (`transfer`), internal failures as error ids (`status`), the
//! connection limits of the engine's and the node's servers (`peers`), TLS files checked
//! at load (`tls`), where plain text is allowed (`plaintext`) and a small HTTP/1.1 client
//! for tiles and witnesses (`http_client`), the log's side of tlog-witness (`cosign`).
//! Nothing here imports a program (`server`, `node`, `player`, `cli`, `demo`, `bench`,
//! `audit`).

pub mod backend;
pub mod client;
pub mod cosign;
pub mod cred;
pub mod failover;
pub mod http_client;
pub mod keys;
pub mod natsd;
pub mod peers;
pub mod plaintext;
pub mod progress;
pub mod spend;
pub mod status;
pub mod tls;
pub mod transfer;
pub mod witness;
