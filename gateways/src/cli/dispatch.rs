//! Runs a parsed command line: sets up logging, starts a runtime where the command needs
//! one, prints the command's human output to stderr and its `--json` object to stdout, and
//! turns the outcome into the exit code (0 ok, 1 the check found a problem, 2 usage or
//! environment error).

use super::args::{AuditCommand, Cli, Command, KeysCommand};
use crate::{audit, bench, demo};
use std::process::ExitCode;

/// Logs go to stderr; long-running processes log at info by default, one-shot commands
/// only warn; `serve --log-json` (or `VOUCHSAFE_LOG_FORMAT=json`) logs JSON lines.
pub fn init_logging(cli: &Cli) {
    let (json_logs, default_level) = match &cli.command {
        Command::Serve(args) => (args.log_json || std::env::var("VOUCHSAFE_LOG_FORMAT").is_ok_and(|format| format == "json"), "info"),
        Command::Node(_) | Command::Witness(_) => (false, "info"),
        _ => (false, "warn"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if json_logs {
        tracing_subscriber::fmt().json().with_writer(std::io::stderr).with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keys { command: KeysCommand::Init { out, origin } } => {
            crate::common::keys::init_with_origin(&out, origin.as_deref())?;
            eprintln!("wrote engine.pem, engine.pub.pem, royalty-master.key, operator.cred, checkpoint.key and checkpoint.vkey to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::Witness { name, out } } => {
            let vkey = crate::common::keys::init_witness(&out, &name)?;
            eprintln!("wrote witness.key and witness.vkey to {}", out.display());
            println!("{vkey}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Witness(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::witness::run(args, crate::server::serve::terminate_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::Rotate(args) } => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::keys::rotate(*args))?.report(json))
        }
        Command::Keys { command: KeysCommand::Revoke(args) } => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::keys::revoke(*args))?.report(json))
        }
        Command::Keys { command: KeysCommand::Issue(args) } => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::issue(*args))?.report(json))
        }
        Command::Merchant(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::merchant(args))?.report(json))
        }
        Command::Admin(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::admin::admin(args))?.report(json))
        }
        Command::Catalog(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::reads::catalog(args))?.report(json))
        }
        Command::Node(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(super::node(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Player(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::player::player(args))?.report(json))
        }
        Command::Points(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::points::points(args))?.report(json))
        }
        Command::Publish(args) => {
            let json = args.json;
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(runtime.block_on(super::publish(*args))?.report(json))
        }
        Command::Inspect(args) => {
            let report = super::inspect::run(&args)?;
            eprintln!("{}", super::inspect::describe(&report));
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Serve(args) => {
            let settings = crate::server::serve::settings(&args)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::server::serve::run(settings, crate::server::serve::terminate_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Replay { backend, keys, pin, witness, checkpoints, json, remote } } => {
            let pin = audit::pin_of(pin.as_deref(), witness.as_deref())?;
            super::audit::replay(&backend, keys.as_deref(), pin, &checkpoints, json, &remote)
        }
        Command::Audit { command: AuditCommand::Handover { backend, keys, out, json } } => super::audit::handover(&backend, &keys, &out, json),
        Command::Audit { command: AuditCommand::Consistency { backend, old, new, keys, vkey, proof, out, json } } => {
            super::audit::consistency(&backend, &super::audit::ConsistencyFiles { old, new, proof, out }, &keys, vkey.as_deref(), json)
        }
        Command::Audit { command: AuditCommand::Statement { backend, keys, holder, period, json, remote } } => {
            super::audit::statement(&backend, keys.as_deref(), &holder, &period, json, &remote)
        }
        Command::Audit { command: AuditCommand::Export { backend, keys, format, out, dsr } } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let (report, exported, entries) = runtime.block_on(audit::rebuild(&backend, &keys))?;
            if format == audit::ExportFormat::Tiles {
                let written = audit::write_tiles(&exported, &keys, &out)?;
                eprintln!("wrote {} tile files ({} bytes, tree of {} entries) to {}", written.files, written.bytes, written.tree_size, out.display());
                return Ok(ExitCode::SUCCESS);
            }
            if format == audit::ExportFormat::Dsr {
                let path = audit::write_dsr(&report, &entries, &dsr, &out)?;
                eprintln!("exported {} usage records as a DDEX DSR (Basic Audio Profile {}) to {}", entries.len(), audit::dsr::PROFILE_VERSION, path.display());
                return Ok(ExitCode::SUCCESS);
            }
            audit::write_export(format, &report, &exported, &entries, &out)?;
            eprintln!("exported {} usage records ({} entries, {} seals) to {}", entries.len(), exported.entries.len(), exported.seals.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Verify { file, keys, pin, witness, json } } => {
            let pin = audit::pin_of(pin.as_deref(), witness.as_deref())?;
            let report = audit::verify_file(&file, &keys, pin)?;
            match &report.first_bad {
                None => eprintln!(
                    "verify: {} entries, {} seals verified, {} entries not yet sealed: OK",
                    report.entries, report.seals_verified, report.unsealed_entries
                ),
                Some(bad) => eprintln!(
                    "verify: FAILED at{}{}{}: {}",
                    bad.entry.map(|entry| format!(" entry {entry}")).unwrap_or_default(),
                    bad.seal.map(|seal| format!(" seal {seal}")).unwrap_or_default(),
                    bad.byte_offset.map(|offset| format!(" byte {offset}")).unwrap_or_default(),
                    bad.reason
                ),
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.chain_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Audit { command: AuditCommand::Prove { backend, keys, voucher, out, tlog_proof } } => {
            let runtime = tokio::runtime::Runtime::new()?;
            if let Some(out) = out {
                let bundles = runtime.block_on(audit::prove(&backend, &keys, &voucher))?;
                std::fs::write(&out, serde_json::to_vec_pretty(&bundles)?)?;
                eprintln!("wrote {} inclusion proof(s) for voucher {voucher} to {}", bundles.len(), out.display());
            }
            if let Some(dir) = tlog_proof {
                let written = runtime.block_on(audit::prove_tlog(&backend, &keys, &voucher, &dir))?;
                eprintln!("wrote {} .tlog-proof file(s) for voucher {voucher} to {}", written.len(), dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::CheckProof { bundle, keys, json } } => {
            let results = audit::check_proof_file(&bundle, &keys)?;
            let ok = results.iter().all(Result::is_ok);
            for result in &results {
                match result {
                    Ok(proven) => eprintln!(
                        "proof OK: entry for voucher {} media {:?} ({}), {} minor units{}",
                        proven.entry.voucher_id,
                        proven.entry.title,
                        proven.entry.media_id,
                        proven.entry.sale_price_minor,
                        if proven.key_committed { "" } else { " (sealed before checkpoints: its key is not committed, the plaintext is as revealed)" }
                    ),
                    Err(reason) => eprintln!("proof FAILED: {reason}"),
                }
            }
            if json {
                let proofs: Vec<serde_json::Value> = results
                    .iter()
                    .map(|result| match result {
                        Ok(proven) => serde_json::json!({ "ok": true, "entry": proven.entry, "key_committed": proven.key_committed }),
                        Err(reason) => serde_json::json!({ "ok": false, "reason": reason }),
                    })
                    .collect();
                println!("{}", serde_json::json!({ "ok": ok, "proofs": proofs }));
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Demo { backend, keys, vouchers, json, connect, ca, client_cert, client_key, insecure_plaintext, node_tls } => {
            let keys_dir = keys.unwrap_or_else(|| backend.data_dir.join("keys"));
            let engine_tls = match connect.clone() {
                Some(connect) => {
                    crate::common::plaintext::check_url(&connect, insecure_plaintext)?;
                    super::ConnectArgs { connect, ca, client_cert, client_key, insecure_plaintext }.engine_tls()?
                }
                None => Default::default(),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let summary =
                runtime.block_on(demo::run(demo::DemoArgs { backend, keys_dir, vouchers: usize::try_from(vouchers)?, connect, engine_tls, node_tls }))?;
            eprintln!(
                "demo: {} purchases, {} delivered ({} decrypted and verified, {} album tracks), {} points-paid, {} previews, {} expired, {} voided, {} refunded after delivery; {} events in the stream; state digest {}; {} ms",
                summary.purchases,
                summary.delivered,
                summary.decrypt_ok,
                summary.album_tracks_delivered,
                summary.points_paid,
                summary.previews,
                summary.expired,
                summary.voided,
                summary.refunded,
                summary.stream_events,
                summary.state_digest,
                summary.elapsed_ms
            );
            eprintln!(
                "royalty log: {} entries, {} seals; audit replay {}",
                summary.royalty_entries,
                summary.seals,
                if summary.audit_ok { "OK" } else { "FAILED" }
            );
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            }
            // Every delivered copy decrypted, verified and names its purchase; the audit passed.
            let ok = summary.delivered > 0 && summary.decrypt_ok == summary.delivered && summary.copies_inspected_ok == summary.delivered && summary.audit_ok;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Bench { quick, nats_url, json, vouchers, delivery_only, rss_probe } => {
            let vouchers = vouchers.map(usize::try_from).transpose()?;
            let runtime = tokio::runtime::Runtime::new()?;
            if delivery_only {
                let delivery = runtime.block_on(bench::run_delivery_only(bench::BenchArgs { quick, nats_url, vouchers }))?;
                let mut table = String::new();
                bench::describe_delivery(&mut table, &delivery, "(not judged alone)");
                eprintln!("{table}");
                if json {
                    println!("{}", serde_json::to_string(&delivery)?);
                }
                return Ok(ExitCode::SUCCESS);
            }
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
