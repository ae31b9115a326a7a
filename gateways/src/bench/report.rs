//! The bench's report printed for a person: every rate next to its raw baseline and ratio.

use super::*;

pub(super) fn cpu(rate: &Rate) -> String {
    match (rate.client_cpu_us, rate.server_cpu_us) {
        (Some(client), Some(server)) => format!("{client:.0} + {server:.0}"),
        (Some(client), None) => format!("{client:.0} + ?"),
        _ => "-".to_string(),
    }
}

pub(super) fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The human table (stderr).
pub fn describe(report: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mode = match (report.quick, report.plan.vouchers) {
        (true, VOUCHERS_QUICK) => "quick",
        (false, VOUCHERS_DEFAULT) => "full",
        _ => "custom size",
    };
    let target = |name: &str| match report.targets.get(name) {
        Some(Some(true)) => "met",
        Some(Some(false)) => "MISSED",
        _ => "n/a",
    };
    let _ = writeln!(
        out,
        "\nvouchsafe bench ({mode}, {} vouchers, {VOUCHERS_IN_FLIGHT} in flight) on nats-server {}, {} cpus, {} servers, {:.0} s",
        report.plan.vouchers, report.nats_server_version, report.cpus, report.servers, report.elapsed_s
    );
    if let Some(busy) = report.cpu_busy_before.filter(|busy| *busy > BUSY_CPU_SHARE) {
        let _ = writeln!(out, "other work kept {:.0}% of the CPU busy just before the run: rates are lower than on an idle machine", busy * 100.0);
    }
    let _ = writeln!(out, "{:<44} {:>14} {:>14} {:>7}  target", "case", "raw", "engine", "ratio");
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 0.75 {}",
        "1 vouchers: commands/s (default sync)",
        report.raw_append_per_s,
        report.engine_append_per_s,
        report.ingest_ratio,
        target("ingest_ratio >= 0.75")
    );
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14}",
        "  per command p50 / p99 ms",
        format!("{} / {}", ms(report.raw_append.p50_ms), ms(report.raw_append.p99_ms)),
        format!("{} / {}", ms(report.engine_append.p50_ms), ms(report.engine_append.p99_ms))
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per command: client + nats-server", cpu(&report.raw_append), cpu(&report.engine_append));
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", "  payload bytes (raw fixed, engine mean)", report.raw_payload_bytes, report.engine_event_bytes_mean);
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}",
        "2 purchases over gRPC: commands/s at the max",
        report.raw_append_per_s,
        report.purchase_max_per_s * 3.0,
        report.purchase_ratio,
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", format!("  purchases/s at the maximum, {VOUCHERS_IN_FLIGHT} in flight"), "-", report.purchase_max_per_s);
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14}",
        format!("  p50 / p99 ms at the maximum ({VOUCHERS_IN_FLIGHT} queued)"),
        "-",
        format!("{} / {}", ms(report.purchase.p50_ms), ms(report.purchase.p99_ms))
    );
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14.0} {:>7.2}  p99 <= {PURCHASE_P99_TARGET_MS} ms {}",
        "  purchases/s, open loop (share of the max)",
        "-",
        report.purchase_per_s,
        report.purchase_load_share,
        target("purchase_p99_ms <= 20")
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  p50 / p99 ms at that rate", "-", format!("{:.2} / {:.2}", report.purchase_p50_ms, report.purchase_p99_ms));
    if let Some(phase) = report.purchase_latency_phases.last() {
        let steps = &phase.steps;
        let _ = writeln!(
            out,
            "{:<44} {:>14} {:>14}",
            "  p50 ms Reserve / Authorize / IssueVoucher",
            "-",
            format!("{:.1} / {:.1} / {:.1}", steps.reserve_p50_ms, steps.authorize_p50_ms, steps.issue_p50_ms)
        );
    }
    for phase in &report.purchase_latency_phases[..report.purchase_latency_phases.len().saturating_sub(1)] {
        let _ = writeln!(
            out,
            "{:<44} {:>14} {:>14}",
            format!("  (tried {} of the max: {:.0}/s achieved)", phase.load_share, phase.rate.per_s),
            "-",
            format!("{} / {}", ms(phase.rate.p50_ms), ms(phase.rate.p99_ms))
        );
    }
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per purchase: process + nats-server", "-", cpu(&report.purchase));
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 0.5 {}",
        format!("3 replay: events/s ({} events)", report.replay_events_small),
        report.raw_consume_per_s,
        report.replay_per_s,
        report.replay_ratio,
        target("replay_ratio >= 0.5")
    );
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per event: client + nats-server", cpu(&report.raw_consume), cpu(&report.replay));
    describe_redeem(&mut out, report, target(&format!("redeem_ratio >= {REDEEM_RATIO_TARGET}")));
    match (&report.durable_raw_append, &report.durable_engine_append, report.durable_ratio) {
        (Some(raw), Some(engine), Some(ratio)) => {
            let _ = writeln!(
                out,
                "{:<44} {:>14.0} {:>14.0} {:>7.3}  >= 2.0 {}",
                "5 durable: commands/s (sync_interval always)",
                raw.per_s,
                engine.per_s,
                ratio,
                target("durable engine >= 2x durable raw")
            );
            let _ = writeln!(
                out,
                "{:<44} {:>14} {:>14}",
                "  per command p50 / p99 ms",
                format!("{} / {}", ms(raw.p50_ms), ms(raw.p99_ms)),
                format!("{} / {}", ms(engine.p50_ms), ms(engine.p99_ms))
            );
            let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per command: client + nats-server", cpu(raw), cpu(engine));
        }
        _ => {
            let _ = writeln!(out, "{:<44} {:>14} {:>14} {:>7}  skipped (--nats-url)", "5 durable (sync_interval always)", "-", "-", "-");
        }
    }
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14} {:>7.2}  <= 1.5x {}",
        "6 engine RSS MB (N vs 10xN vouchers)",
        format!("{:.1} @ {}", report.rss_mb_small, report.rss_vouchers_small),
        format!("{:.1} @ {}", report.rss_mb_large, report.rss_vouchers_large),
        report.rss_mb_large / report.rss_mb_small,
        target("rss growth <= 1.5x for 10x vouchers")
    );
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14} {:>7.2}  linear {}",
        "7 audit replay ms (N vs 10xN; growth/event)",
        format!("{:.0} @ {}", report.replay_ms_small, report.replay_events_small),
        format!("{:.0} @ {}", report.replay_ms_large, report.replay_events_large),
        report.replay_cost_growth,
        target("replay cost linear (per-event time at 10x <= 1.25x)")
    );
    let total = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |us| format!("{us:.0}"));
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "8 one stream: engines", "1 engine", "2 engines");
    let _ = writeln!(out, "{:<44} {:>14.0} {:>14.0}", "  commands/s (purchases over gRPC, closed loop)", report.engines_1_per_s, report.engines_2_per_s);
    let _ = writeln!(out, "{:<44} {:>14} {:>14.2}", "  share of the commands on the second engine", "-", report.engines_2_second_engine_share);
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  CPU us per command: process + nats-server", cpu(&report.engines_1), cpu(&report.engines_2));
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14}",
        "  CPU us per command, in all",
        total(report.engines_1_cpu_per_command_us),
        total(report.engines_2_cpu_per_command_us)
    );
    describe_delivery(&mut out, &report.delivery, target(&format!("delivery_ratio >= {DELIVERY_RATIO_TARGET}")));
    let _ = writeln!(out, "notes: case 1 raw = async-nats publishes from one task; engine = one task per voucher through Market.");
    let _ = writeln!(out, "       case 3 raw = {}; engine = projections::audit::replay (royalty chain and seals).", report.raw_consume_method);
    let _ = writeln!(out, "       case 4 engine = {}.", report.redeem_path);
    let _ = writeln!(
        out,
        "       case 2 raw = case 1's raw publishes; engine = the gRPC server in this process, {} merchants on their own channels, {} nodes (no agents).",
        report.purchase_merchants, report.purchase_nodes
    );
    let _ = writeln!(
        out,
        "       case 2 at the maximum is queueing: with {VOUCHERS_IN_FLIGHT} purchases in flight the mean is in flight / rate = {:.1} ms (Little's law); the open loop is tried at {:?} of it until p99 <= {PURCHASE_P99_TARGET_MS} ms.",
        VOUCHERS_IN_FLIGHT as f64 * 1000.0 / report.purchase_max_per_s,
        PURCHASE_LATENCY_LOAD_SHARES
    );
    if !report.audit_ok {
        let _ = writeln!(out, "AUDIT REPLAY FOUND A PROBLEM: the numbers above are not valid");
    }
    out
}

/// Case 4's rows: CPU per redemption next to its raw parts, the rates beside them.
fn describe_redeem(out: &mut String, report: &BenchReport, target: &str) {
    use std::fmt::Write as _;
    let us = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |us| format!("{us:.1}"));
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14} {:>7.3}  >= {REDEEM_RATIO_TARGET} {target}",
        "4 redeem over gRPC: CPU us per redemption",
        us(report.raw_redeem_cpu_us),
        us(report.redeem_cpu_us),
        report.redeem_ratio,
    );
    let substrate = &report.redeem_substrate;
    for (part, cost) in substrate.parts() {
        let what = match part {
            "oaep" => format!("  raw: RSA-OAEP (aws-lc-rs) x {:.0}", substrate.keys_per_redemption),
            "appends" => format!("  raw: appends x {:.2} ({} B)", substrate.appends_per_redemption, substrate.append_payload_bytes),
            "grpc" => format!("  raw: unary gRPC round trip ({} B / {} B)", substrate.grpc_request_bytes, substrate.grpc_response_bytes),
            _ => format!("  raw: 1/{} of a batch signature", substrate.batch_records),
        };
        let _ = writeln!(out, "{what:<44} {:>14}", us(cost));
    }
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  engine: process + nats-server", "-", cpu(&report.redeem));
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", "  redemptions/s over gRPC", "-", report.redeem_per_s);
    let _ = writeln!(out, "{:<44} {:>14} {:>14}", "  redeem p50 / p99 ms", "-", format!("{} / {}", ms(report.redeem.p50_ms), ms(report.redeem.p99_ms)));
    let _ = writeln!(out, "{:<44} {:>14} {:>14.0}", "  redeem in process/s (Market::redeem)", "-", report.redeem_in_process.per_s);
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14}",
        format!("  raw OAEP/s, {} thr: aws-lc-rs / rsa 0.9", report.rsa_threads),
        report.raw_rsa_oaep_per_s,
        format!("{:.0}", report.raw_rsa_crate_oaep_per_s)
    );
}

/// Case 9's rows: each phase next to the raw baseline with as many readers.
pub fn describe_delivery(out: &mut String, delivery: &DeliveryCase, target: &str) {
    use std::fmt::Write as _;
    let per_mib = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}"));
    let players = delivery.players;
    let _ = writeln!(
        out,
        "{:<44} {:>14} {:>14}",
        format!("9 delivery: {:.1} MiB container, MiB/s", delivery.container_bytes as f64 / raw::MIB),
        "raw TCP+AES",
        "engine"
    );
    let rows = [
        (format!("  {players} players at once, warm node cache"), delivery.raw_together.mib_s, &delivery.warm_many, Some(target)),
        ("  1 player, warm node cache".to_string(), delivery.raw_together_single.mib_s, &delivery.warm_single, None),
        (format!("  {players} players at once, cold node cache"), delivery.raw_together.mib_s, &delivery.cold_many, None),
        ("  1 player, cold node cache".to_string(), delivery.raw_together_single.mib_s, &delivery.cold_single, None),
    ];
    for (what, raw, phase, target) in rows {
        let ratio = if raw > 0.0 { phase.mib_s / raw } else { f64::NAN };
        let judged = target.map(|target| format!("  >= {DELIVERY_RATIO_TARGET} {target}")).unwrap_or_default();
        let _ = writeln!(out, "{what:<44} {raw:>14.0} {:>14.0} {ratio:>7.3}{judged}", phase.mib_s);
        let _ = writeln!(
            out,
            "{:<44} {:>14} {:>14}",
            "    first byte p50 / max ms; CPU ms/MiB node + players",
            format!("{:.1} / {:.1}", phase.ttfb_p50_ms, phase.ttfb_max_ms),
            format!("{} + {}", per_mib(phase.node_cpu_ms_per_mib), per_mib(phase.player_cpu_ms_per_mib))
        );
    }
    let _ = writeln!(
        out,
        "{:<44} {:>14.0} {:>14}",
        format!("  raw apart: TCP copy to {players} / AES-GCM, MiB/s"),
        delivery.raw_tcp_copy.mib_s,
        format!("{:.0}", delivery.raw_aes_gcm.mib_s)
    );
    let written = delivery.raw_together_written.mib_s;
    let _ = writeln!(
        out,
        "{:<44} {written:>14.0} {:>14.0} {:>7.3}",
        format!("  {players} players vs raw writing each copy"),
        delivery.warm_many.mib_s,
        if written > 0.0 { delivery.warm_many.mib_s / written } else { f64::NAN }
    );
    let _ = writeln!(out, "       case 9 CPU: {}.", delivery.cpu_measured);
}
