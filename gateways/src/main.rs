//! The `vouchsafe` binary: one command-line tool with subcommands (CLI.md). Argument
//! parsing and output live here; the work lives in the libraries.

use gateways::{audit, backend, bench, commands, demo, inspect, keys, serve};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the engine allocates per command (roots, events,
/// headers), and in the bench profile glibc's malloc and free took about 15 % of its CPU.
///
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc
/// (`heaptrack`), which never see mimalloc's allocations.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "vouchsafe", version, about = "Event-sourced sale and delivery of digital media")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The engine: gRPC services, projections, sweeper, sealer; stops gracefully on SIGTERM/ctrl-c.
    Serve(serve::ServeArgs),
    /// A merchant client: reserve, authorize, void, issue, buy, preview, get.
    Merchant(commands::MerchantArgs),
    /// Operator administration: stats, config get|set, node drain|remove.
    Admin(commands::AdminArgs),
    /// A delivery node agent: registers, follows its feed, serves media to players.
    Node(commands::NodeCliArgs),
    /// The reference consumer: passport, redeem, download, decrypt, verify.
    Player(commands::PlayerArgs),
    /// Build signed media containers (renditions, descriptive data, preview clip) under fresh keys, wrap each key for the engine, upload.
    Publish(Box<commands::PublishArgs>),
    /// A media container or delivered copy: structure, signatures, transaction record.
    Inspect(inspect::InspectArgs),
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
        /// Drive an engine already running under `serve` (uses operator.cred from --keys).
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
        /// Internal: the memory case's child process, with the key directory to use.
        #[arg(long, hide = true, requires = "nats_url", requires = "vouchers")]
        rss_probe: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Rebuild every projection from sequence 1 and verify everything.
    Replay {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// Key directory holding engine.pub.pem and royalty-master.key.
        #[arg(long)]
        keys: PathBuf,
        /// The newest seal seen: its hash in hex, or a witness file.
        #[arg(long)]
        pin: Option<String>,
        /// Print one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Export the royalty log (log), usage records (csv, json) or a DSR-style report (dsr).
    Export {
        #[command(flatten)]
        backend: backend::BackendArgs,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, value_enum)]
        format: audit::ExportFormat,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an exported royalty log (--format log) alone.
    Verify {
        file: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        pin: Option<String>,
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
        #[arg(long)]
        out: PathBuf,
    },
    /// Check inclusion proofs with the engine's public key (engine.pub.pem in --keys).
    CheckProof {
        bundle: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write engine.pem, engine.pub.pem, royalty-master.key and operator.cred.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a merchant, node or auditor credential from a running engine (operator only).
    Issue(commands::IssueArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running processes log at info by default; one-shot commands only warn.
    let (json_logs, default_level) = match &cli.command {
        Command::Serve(args) => (args.log_json || std::env::var("VOUCHSAFE_LOG_FORMAT").is_ok_and(|format| format == "json"), "info"),
        Command::Node(_) => (false, "info"),
        _ => (false, "warn"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if json_logs {
        tracing_subscriber::fmt().json().with_writer(std::io::stderr).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keys { command: KeysCommand::Init { out } } => {
            keys::init(&out)?;
            eprintln!("wrote engine.pem, engine.pub.pem, royalty-master.key and operator.cred to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::Issue(args) } => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(commands::issue(args))?.report(json))
        }
        Command::Merchant(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(commands::merchant(args))?.report(json))
        }
        Command::Admin(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(commands::admin(args))?.report(json))
        }
        Command::Node(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(commands::node(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Player(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(commands::player(args))?.report(json))
        }
        Command::Publish(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(commands::publish(*args))?.report(json))
        }
        Command::Inspect(args) => {
            let report = inspect::run(&args)?;
            eprintln!("{}", inspect::describe(&report));
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Serve(args) => {
            let settings = serve::settings(&args)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve::run(settings, serve::terminate_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Replay { backend, keys, pin, json } } => {
            let pin = pin.as_deref().map(audit::parse_pin).transpose()?;
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(audit::replay(&backend, &keys, pin))?;
            eprintln!("{}", audit::describe(&report));
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Audit { command: AuditCommand::Export { backend, keys, format, out } } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let (report, exported, entries) = runtime.block_on(audit::rebuild(&backend, &keys))?;
            audit::write_export(format, &report, &exported, &entries, &out)?;
            eprintln!("exported {} usage records ({} entries, {} seals) to {}", entries.len(), exported.entries.len(), exported.seals.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Verify { file, keys, pin, json } } => {
            let pin = pin.as_deref().map(audit::parse_pin).transpose()?;
            let report = audit::verify_file(&file, &keys, pin)?;
            match &report.first_bad {
                None => eprintln!("verify: {} entries, {} seals verified, {} entries not yet sealed: OK", report.entries, report.seals_verified, report.unsealed_entries),
                Some(bad) => eprintln!("verify: FAILED at entry {:?} seal {:?}: {}", bad.entry, bad.seal, bad.reason),
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.chain_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Audit { command: AuditCommand::Prove { backend, keys, voucher, out } } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let bundles = runtime.block_on(audit::prove(&backend, &keys, &voucher))?;
            std::fs::write(&out, serde_json::to_vec_pretty(&bundles)?)?;
            eprintln!("wrote {} inclusion proof(s) for voucher {voucher} to {}", bundles.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::CheckProof { bundle, keys, json } } => {
            let results = audit::check_proof_file(&bundle, &keys)?;
            let ok = results.iter().all(Result::is_ok);
            for result in &results {
                match result {
                    Ok(entry) => eprintln!("proof OK: entry for voucher {} media {:?} ({}), {} minor units", entry.voucher_id, entry.title, entry.media_id, entry.sale_price_minor),
                    Err(reason) => eprintln!("proof FAILED: {reason}"),
                }
            }
            if json {
                let proofs: Vec<serde_json::Value> = results
                    .iter()
                    .map(|result| match result {
                        Ok(entry) => serde_json::json!({ "ok": true, "entry": entry }),
                        Err(reason) => serde_json::json!({ "ok": false, "reason": reason }),
                    })
                    .collect();
                println!("{}", serde_json::json!({ "ok": ok, "proofs": proofs }));
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Demo { backend, keys, vouchers, json, connect, ca, client_cert, client_key } => {
            let keys_dir = keys.unwrap_or_else(|| backend.data_dir.join("keys"));
            let engine_tls = match connect.clone() {
                Some(connect) => commands::ConnectArgs { connect, ca, client_cert, client_key }.engine_tls()?,
                None => Default::default(),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let summary = runtime.block_on(demo::run(demo::DemoArgs { backend, keys_dir, vouchers: usize::try_from(vouchers)?, connect, engine_tls }))?;
            eprintln!(
                "demo: {} purchases, {} delivered ({} decrypted and verified, {} album tracks), {} points-paid, {} previews, {} expired, {} voided; {} events in the stream; state digest {}; {} ms",
                summary.purchases, summary.delivered, summary.decrypt_ok, summary.album_tracks_delivered, summary.points_paid, summary.previews, summary.expired, summary.voided,
                summary.stream_events, summary.state_digest, summary.elapsed_ms
            );
            eprintln!("royalty log: {} entries, {} seals; audit replay {}", summary.royalty_entries, summary.seals, if summary.audit_ok { "OK" } else { "FAILED" });
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            // Every delivered copy decrypted, verified and names its purchase; the audit passed.
            let ok = summary.delivered > 0 && summary.decrypt_ok == summary.delivered && summary.copies_inspected_ok == summary.delivered && summary.audit_ok;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Bench { quick, nats_url, json, vouchers, rss_probe } => {
            let vouchers = vouchers.map(usize::try_from).transpose()?;
            let runtime = tokio::runtime::Runtime::new()?;
            if let (Some(keys_dir), Some(url), Some(vouchers)) = (rss_probe, &nats_url, vouchers) {
                let probe = runtime.block_on(bench::rss_probe(url, &keys_dir, vouchers))?;
                println!("{}", serde_json::to_string(&probe)?);
                return Ok(ExitCode::SUCCESS);
            }
            let report = runtime.block_on(bench::run(bench::BenchArgs { quick, nats_url, vouchers }))?;
            eprintln!("{}", bench::describe(&report));
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.audit_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
