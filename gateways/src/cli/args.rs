//! The `vouchsafe` command line (clap): every subcommand and its flags (CLI.md is the
//! contract). Parsing only; `dispatch` runs what was parsed.

use crate::common::backend;
use crate::{audit, bench};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "vouchsafe", version, about = "Event-sourced sale and delivery of digital media")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The engine: gRPC services, projections, sweeper, sealer; stops gracefully on SIGTERM/ctrl-c.
    Serve(crate::server::serve::ServeArgs),
    /// A merchant client: reserve, authorize, void, issue, buy, preview, get; list, statement.
    Merchant(super::MerchantArgs),
    /// Operator administration: stats, config, nodes, merchants, auditors, media, certificates;
    /// the ledger, the parties, points accounts.
    Admin(super::admin::AdminArgs),
    /// What is on sale, at what price (a merchant's credential): search by title or artist.
    Catalog(super::reads::CatalogArgs),
    /// A delivery node agent: registers, follows its feed, serves media to players.
    Node(super::NodeCliArgs),
    /// The reference consumer: passport, redeem, download, decrypt, verify; spend
    /// authorizations and the consumer's own points.
    Player(super::player::PlayerArgs),
    /// Points accounts: top-ups by the operator or by a merchant selling points.
    Points(super::points::PointsArgs),
    /// Build signed media containers (renditions, descriptive data, preview clip) under fresh keys, wrap each key for the engine, upload.
    Publish(Box<super::PublishArgs>),
    /// A media container or delivered copy: structure, signatures, transaction record.
    Inspect(super::inspect::InspectArgs),
    /// A C2SP tlog-witness: cosigns checkpoints of the logs it knows that extend the last it saw.
    Witness(crate::witness::WitnessArgs),
    /// Auditor commands: replay and verify the stream.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The whole market end to end in one process (the main job).
    Demo {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// Key directory (created with `keys init` when empty); default <data-dir>/keys.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// How many vouchers to sell.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        vouchers: u64,
        /// Print one JSON summary object on the last line of stdout.
        #[arg(long)]
        json: bool,
        /// Drive an engine already running under `serve` (uses operator.cred from --keys);
        /// several engines on one stream comma-separated (failover).
        #[arg(long)]
        connect: Option<String>,
        /// With --connect https://…: PEM of the CA that signed the engine's certificate.
        #[arg(long, requires = "connect")]
        ca: Option<PathBuf>,
        /// With --connect to an engine that requires client certificates (mTLS): the PEM
        /// certificate the demo and its delivery nodes present.
        #[arg(long, requires_all = ["connect", "client_key"])]
        client_cert: Option<PathBuf>,
        /// PEM private key of --client-cert.
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// With --connect http:// to a non-loopback engine: send credentials in plain text.
        #[arg(long, requires = "connect")]
        insecure_plaintext: bool,
        /// Delivery nodes serve players over TLS, under certificates from a throwaway CA made
        /// for the run (its certificate is written to <data-dir>/node-tls/ca.pem).
        #[arg(long)]
        node_tls: bool,
    },
    /// Benchmarks with raw-substrate baselines measured in the same run.
    Bench {
        /// Smaller workloads (3,000 vouchers): under 2 minutes on 2 cores.
        #[arg(long)]
        quick: bool,
        /// Run against this nats-server instead of starting our own: the bench creates (and
        /// deletes) its streams VSBENCH, VSBENCH_NODES and VSBENCH_RAW there, so no other
        /// stream may claim vs.>, vsn.> or vb.>; the durable case is skipped.
        #[arg(long)]
        nats_url: Option<String>,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
        /// Override the number of vouchers N (tiny runs for tests).
        #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..=bench::VOUCHERS_MAX as u64))]
        vouchers: Option<u64>,
        /// Only case 9 (delivery through one node, no nats-server): for profiling it.
        #[arg(long)]
        delivery_only: bool,
        /// Internal: the memory case's child process, with the key directory to use.
        #[arg(long, hide = true, requires = "nats_url", requires = "vouchers")]
        rss_probe: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Rebuild every projection from sequence 1 and verify everything (or ask a running
    /// engine to, with --connect).
    Replay {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// Key directory holding engine.pub.pem and royalty-master.key (not with --connect).
        #[arg(long, required_unless_present = "connect", conflicts_with = "connect")]
        keys: Option<PathBuf>,
        /// The newest seal seen: its hash in hex.
        #[arg(long)]
        pin: Option<String>,
        /// Pin the seal named on the last line of this witness file instead.
        #[arg(long, conflicts_with = "pin")]
        witness: Option<PathBuf>,
        #[command(flatten)]
        checkpoints: super::audit::CheckpointArgs,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: super::audit::RemoteArgs,
    },
    /// Verify the stream, then build an engine's projection store from it with the royalty
    /// chain's key at the stream's end: how an engine without the royalty master key
    /// (forward security) recovers a lost store or joins the stream. Move --out to the
    /// engine host as <data-dir>/projections.
    Handover {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// The auditor's key directory: engine.pub.pem and royalty-master.key.
        #[arg(long)]
        keys: PathBuf,
        /// A new (or empty) directory for the projection store.
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check that one C2SP checkpoint extends another (an RFC 6962 consistency proof), with
    /// the proof from --proof, or computed from the stream's own tree.
    Consistency {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// The older checkpoint (a signed note).
        #[arg(long)]
        old: PathBuf,
        /// The newer checkpoint (a signed note).
        #[arg(long)]
        new: PathBuf,
        /// Key directory: checkpoint.vkey, and for a proof from the stream engine.pub.pem and
        /// royalty-master.key.
        #[arg(long)]
        keys: PathBuf,
        /// The checkpoint verifier key, if not the key directory's checkpoint.vkey.
        #[arg(long)]
        vkey: Option<PathBuf>,
        /// The proof (one base64 hash a line); without it, computed from the stream.
        #[arg(long)]
        proof: Option<PathBuf>,
        /// Write the proof here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// A rights holder's statement for one month, from a verified replay (equal to the
    /// totals of its usages); with --connect, from the running engine's AuditService.
    Statement {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// Key directory holding engine.pub.pem and royalty-master.key (not with --connect).
        #[arg(long, required_unless_present = "connect", conflicts_with = "connect")]
        keys: Option<PathBuf>,
        #[command(flatten)]
        holder: super::audit::HolderArgs,
        /// The calendar month, YYYY-MM (UTC).
        #[arg(long, value_parser = super::reads::parse_period)]
        period: String,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: super::audit::RemoteArgs,
    },
    /// Export the royalty log (log), usage records (csv, json), a DDEX DSR, Basic Audio Profile 1.2 (dsr) or C2SP
    /// tlog-tiles (tiles, into the directory --out).
    Export {
        #[command(flatten)]
        backend: backend::BackendArgs,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, value_enum)]
        format: audit::ExportFormat,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        dsr: audit::dsr::DsrParties,
    },
    /// Verify an exported royalty log (--format log) alone.
    Verify {
        file: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        /// The newest seal seen: its hash in hex.
        #[arg(long)]
        pin: Option<String>,
        /// Pin the seal named on the last line of this witness file instead.
        #[arg(long, conflicts_with = "pin")]
        witness: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write inclusion proofs for a voucher's deliveries, checkable with the public key alone.
    Prove {
        #[command(flatten)]
        backend: backend::BackendArgs,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        voucher: String,
        /// Write the proof bundles (JSON) here.
        #[arg(long, required_unless_present = "tlog_proof")]
        out: Option<PathBuf>,
        /// Write one C2SP `.tlog-proof` per delivery into this directory (against the newest
        /// checkpoint; checkable with checkpoint.vkey alone).
        #[arg(long)]
        tlog_proof: Option<PathBuf>,
    },
    /// Check inclusion proofs (a JSON bundle file, or a .tlog-proof) with public keys alone:
    /// engine.pub.pem, and checkpoint.vkey when --keys has it (a .tlog-proof needs it).
    CheckProof {
        bundle: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Write engine.pem, engine.pub.pem, royalty-master.key, operator.cred, checkpoint.key
    /// and checkpoint.vkey.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// The royalty log's origin, the checkpoint key's name (default
        /// vouchsafe.local/royalty/<engine key id>).
        #[arg(long)]
        origin: Option<String>,
    },
    /// Write a witness key pair: witness.key (0600) and witness.vkey (a cosignature/v1 vkey).
    Witness {
        /// The witness's name (a schema-less URL, e.g. witness.example/w1).
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a merchant, node or auditor credential from a running engine (operator only).
    Issue(Box<super::IssueArgs>),
    /// Rotate a key without downtime: `engine` (the RSA key: the old one kept under retired/,
    /// engine.pub.pem the set), `token` (a new token key in token.key: receipts and access
    /// tokens) or `checkpoint` (a new checkpoint.key, the old vkey under retired/); then the
    /// running engine reloads --keys and records the rotation. What was signed or made
    /// before still verifies, by key id.
    Rotate(Box<super::keys::RotateArgs>),
    /// Revoke an engine key rotated out, once keys.revoke_grace_ms has passed since.
    Revoke(Box<super::keys::RevokeArgs>),
}
