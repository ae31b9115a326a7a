//! The `vouchsafe` binary: one command-line tool with subcommands (CLI.md). Argument
//! parsing and output live here; the work lives in the libraries.

mod demo;
mod keys;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// The whole market end to end in one process (the main job).
    Demo {
        /// Directory of the embedded log and local state.
        #[arg(long, default_value = "./vouchsafe-data")]
        data_dir: PathBuf,
        /// Key directory (created with `keys init` when empty); default <data-dir>/keys.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// How many vouchers to sell.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        vouchers: u64,
        /// Print one JSON summary object on the last line of stdout.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
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
        Command::Demo { data_dir, keys, vouchers, json } => {
            let keys_dir = keys.unwrap_or_else(|| data_dir.join("keys"));
            let runtime = tokio::runtime::Runtime::new()?;
            let summary = runtime.block_on(demo::run(demo::DemoArgs { data_dir, keys_dir, vouchers: usize::try_from(vouchers)? }))?;
            eprintln!(
                "demo: {} purchases, {} delivered ({} decrypted and verified, {} album tracks), {} points-paid, {} previews, {} expired, {} voided; {} events in the stream; state digest {}; {} ms",
                summary.purchases, summary.delivered, summary.decrypt_ok, summary.album_tracks_delivered, summary.points_paid, summary.previews, summary.expired, summary.voided,
                summary.stream_events, summary.state_digest, summary.elapsed_ms
            );
            eprintln!("not yet built: the royalty chain and seals (royalty_entries, seals) and the audit replay (audit_ok) report 0/false until they land");
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            let ok = summary.delivered > 0 && summary.decrypt_ok == summary.delivered;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
