//! `vouchsafe bench` end to end, tiny: it starts its own nats-servers, runs every case on a
//! few hundred vouchers and prints one JSON object with every key CLI.md lists. Nothing
//! here times anything: the numbers depend on the machine; only their shape is checked.

use std::process::Command;

/// The `bench --json` keys of CLI.md, plus the cost-growth keys issue 10 adds.
const REQUIRED_KEYS: &[&str] = &[
    "raw_append_per_s",
    "engine_append_per_s",
    "ingest_ratio",
    "purchase_per_s",
    "purchase_p50_ms",
    "purchase_p99_ms",
    "raw_consume_per_s",
    "replay_per_s",
    "replay_ratio",
    "raw_rsa_oaep_per_s",
    "redeem_per_s",
    "redeem_ratio",
    "redeem_cpu_us",
    "raw_redeem_cpu_us",
    "raw_rsa_crate_oaep_per_s",
    "durable_raw_append_per_s",
    "durable_engine_append_per_s",
    "rss_mb_small",
    "rss_mb_large",
    "nats_server_version",
    "replay_ms_small",
    "replay_ms_large",
    "purchase_max_per_s",
    "purchase_load_share",
    "engines_1_cpu_per_command_us",
    "engines_2_cpu_per_command_us",
    "engines_1_per_s",
    "engines_2_per_s",
    "delivery_mib_s",
    "delivery_single_mib_s",
    "delivery_ttfb_ms",
    "delivery_node_cpu_ms_per_mib",
    "delivery_player_cpu_ms_per_mib",
    "raw_delivery_mib_s",
    "delivery_ratio",
];

/// Keys that must hold a finite, positive number in a run with its own servers.
const POSITIVE_KEYS: &[&str] = &[
    "raw_append_per_s",
    "engine_append_per_s",
    "ingest_ratio",
    "purchase_per_s",
    "purchase_p50_ms",
    "purchase_p99_ms",
    "purchase_ratio",
    "raw_consume_per_s",
    "replay_per_s",
    "replay_ratio",
    "raw_rsa_oaep_per_s",
    "redeem_per_s",
    "redeem_ratio",
    "redeem_cpu_us",
    "raw_redeem_cpu_us",
    "raw_rsa_crate_oaep_per_s",
    "durable_raw_append_per_s",
    "durable_engine_append_per_s",
    "rss_mb_small",
    "rss_mb_large",
    "replay_ms_small",
    "replay_ms_large",
    "engines_1_cpu_per_command_us",
    "engines_2_cpu_per_command_us",
    "engines_1_per_s",
    "engines_2_per_s",
    "delivery_mib_s",
    "delivery_single_mib_s",
    "delivery_ttfb_ms",
    "delivery_node_cpu_ms_per_mib",
    "delivery_player_cpu_ms_per_mib",
    "raw_delivery_mib_s",
    "delivery_ratio",
    "delivery_cold_mib_s",
    "delivery_cold_single_mib_s",
    "delivery_cold_ttfb_ms",
    "raw_delivery_single_mib_s",
    "raw_tcp_copy_mib_s",
    "raw_aes_gcm_mib_s",
    "raw_delivery_written_mib_s",
    "delivery_written_ratio",
];

#[test]
fn a_tiny_bench_prints_every_key_with_finite_positive_rates() {
    let output = Command::new(env!("CARGO_BIN_EXE_vouchsafe")).args(["bench", "--vouchers", "200", "--json"]).output().expect("run vouchsafe bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed ({}): {stderr}", output.status);
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    for key in REQUIRED_KEYS {
        assert!(report.get(key).is_some(), "missing key {key} in {report}");
    }
    for key in POSITIVE_KEYS {
        let value = report[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {report}"));
        assert!(value.is_finite() && value > 0.0, "{key} = {value} is not finite and positive");
    }
    // Case 2 ran over gRPC: every timed purchase counted, the target judged (met or not:
    // nothing here times anything), and the median no slower than the 99th percentile.
    assert_eq!(report["purchase"]["operations"].as_u64(), Some(200), "every timed purchase counts once: {report}");
    // The latency phases are further sets of purchases, offered at shares of the maximum
    // until one keeps p99 within 20 ms; the last phase run is the reported one.
    let phases = report["purchase_latency_phases"].as_array().unwrap_or_else(|| panic!("no purchase_latency_phases: {report}"));
    assert!((1..=3).contains(&phases.len()), "one to three latency phases: {report}");
    let reported = phases.last().expect("a phase");
    for (index, phase) in phases.iter().enumerate() {
        assert_eq!(phase["rate"]["operations"].as_u64(), Some(200), "every paced purchase counts once: {report}");
        let within = phase["rate"]["p99_ms"].as_f64().is_some_and(|p99| p99 <= 20.0);
        // Only the last phase may be within 20 ms, and one stops early only when it is: a
        // run where no share meets the target (it depends on the machine's load, which a
        // test must not assume) tries every share.
        if index + 1 < phases.len() {
            assert!(!within, "phases stop at the first within 20 ms: {report}");
        } else {
            let shares = gateways::bench::PURCHASE_LATENCY_LOAD_SHARES.len();
            assert!(within || phases.len() == shares, "phases go on until one is within 20 ms or every share was tried: {report}");
        }
    }
    let maximum = report["purchase_max_per_s"].as_f64().expect("purchase_max_per_s");
    let offered = reported["offered_per_s"].as_f64().expect("offered_per_s");
    assert!(offered > 0.0 && offered < maximum, "the latency phase offers less than the maximum: {report}");
    assert_eq!(report["purchase_load_share"], reported["load_share"], "{report}");
    assert_eq!(report["purchase_per_s"], reported["rate"]["per_s"], "{report}");
    assert_eq!(report["purchase_p99_ms"], reported["rate"]["p99_ms"], "{report}");
    assert!(report["purchase_p99_target_met"].is_boolean(), "purchase_p99_target_met is not a bool: {report}");
    assert_eq!(report["targets"]["purchase_p99_ms <= 20"], report["purchase_p99_target_met"], "{report}");
    assert!(report["purchase_p50_ms"].as_f64() <= report["purchase_p99_ms"].as_f64(), "{report}");
    for step in ["reserve", "authorize", "issue"] {
        let p50 = reported["steps"][format!("{step}_p50_ms")].as_f64().unwrap_or_else(|| panic!("no {step} p50: {report}"));
        assert!(p50.is_finite() && p50 > 0.0, "{step} p50 = {p50}");
    }
    assert!(stderr.contains("2 purchases over gRPC"), "the human table has a row for case 2: {stderr}");
    // Case 8: the same timed purchases (three commands each) against one engine and against
    // two on one stream; CPU per command is the process's plus the nats-server's.
    for engines in ["engines_1", "engines_2"] {
        assert_eq!(report[engines]["operations"].as_u64(), Some(600), "every timed command counts once: {report}");
        let process = report[engines]["client_cpu_us"].as_f64().unwrap_or_else(|| panic!("{engines} has no process CPU: {report}"));
        let server = report[engines]["server_cpu_us"].as_f64().unwrap_or_else(|| panic!("{engines} has no nats-server CPU: {report}"));
        let in_all = report[format!("{engines}_cpu_per_command_us")].as_f64().expect("checked above");
        assert!((in_all - (process + server)).abs() < 1e-6, "{engines}: {in_all} is not {process} + {server}");
        assert_eq!(report[format!("{engines}_per_s")], report[engines]["per_s"], "{report}");
    }
    // Half the merchants were on the second engine: it answered half the commands.
    let share = report["engines_2_second_engine_share"].as_f64().unwrap_or_else(|| panic!("no engines_2_second_engine_share: {report}"));
    assert!((share - 0.5).abs() < 0.01, "the second engine answered {share} of the two-engine run's commands, not half");
    assert!(stderr.contains("8 one stream: engines"), "the human table has a row for case 8: {stderr}");
    // Case 4: every purchase of the maximum redeemed over gRPC; CPU per redemption is the
    // process's plus the nats-server's, the raw cost is the sum of its parts (one
    // redemption's keys, appends, round trip and share of a batch signature), and the
    // ratio is raw over engine.
    assert_eq!(report["redeem"]["operations"].as_u64(), Some(200), "every purchase of the maximum is redeemed once: {report}");
    let number = |value: &serde_json::Value| value.as_f64().unwrap_or_else(|| panic!("not a number: {value} in {report}"));
    let engine_us = number(&report["redeem_cpu_us"]);
    let expected = number(&report["redeem"]["client_cpu_us"]) + number(&report["redeem"]["server_cpu_us"]);
    assert!((engine_us - expected).abs() < 1e-6, "redeem_cpu_us {engine_us} is not process + nats-server {expected}");
    let raw = &report["redeem_substrate"];
    assert_eq!(raw["keys_per_redemption"].as_f64(), Some(1.0), "one media bought, one key wrapped: {report}");
    assert_eq!(raw["appends_per_redemption"].as_f64(), Some(1.0), "a redemption appends one event: {report}");
    assert!(raw["append_payload_bytes"].as_u64() > Some(100), "the raw appends carry the engine's event size: {report}");
    assert!(raw["grpc_response_bytes"].as_u64() > Some(256), "the raw answer carries a wrapped key and a signature: {report}");
    let parts = number(&raw["oaep_cpu_us"]) * number(&raw["keys_per_redemption"])
        + number(&raw["append_cpu_us"]) * number(&raw["appends_per_redemption"])
        + number(&raw["grpc_cpu_us"])
        + number(&raw["batch_signature_cpu_us"]) / number(&raw["batch_records"]);
    let raw_us = number(&report["raw_redeem_cpu_us"]);
    assert!((raw_us - parts).abs() < 1e-6, "raw_redeem_cpu_us {raw_us} is not the sum of its parts {parts}");
    let ratio = number(&report["redeem_ratio"]);
    assert!((ratio - raw_us / engine_us).abs() < 1e-9, "redeem_ratio {ratio} is not raw {raw_us} / engine {engine_us}");
    assert!(report["targets"]["redeem_ratio >= 0.5"].is_boolean(), "the redeem target is judged: {report}");
    assert!(stderr.contains("4 redeem over gRPC: CPU us per redemption"), "the human table has a row for case 4: {stderr}");
    let version = report["nats_server_version"].as_str().expect("nats_server_version is a string");
    assert_eq!(version.split('.').count(), 3, "{version} is not major.minor.patch");
    assert_eq!(report["audit_ok"], true, "the audit replay of the bench stream must be clean");
    // The cost-growth case replays ten times the vouchers of case 1.
    let small = report["replay_events_small"].as_u64().expect("replay_events_small");
    let large = report["replay_events_large"].as_u64().expect("replay_events_large");
    assert!(large > 5 * small, "the large replay ({large} events) must be about ten times the small one ({small})");
    assert!(report["replay_royalty_entries"].as_u64() > Some(0), "deliveries must give the royalty chain entries: {report}");
    // Case 9: every phase delivered to its players, the ratio is the warm many-player rate
    // over the raw baseline with as many readers, and the target is judged.
    let delivery = &report["delivery"];
    let players = delivery["players"].as_u64().expect("delivery players");
    assert!(players >= 2, "several players at once: {report}");
    for (phase, count) in [("cold_single", 1), ("warm_single", 1), ("warm_many", players), ("cold_many", players)] {
        assert_eq!(delivery[phase]["players"].as_u64(), Some(count), "{phase}: {report}");
    }
    let ratio = report["delivery_ratio"].as_f64().expect("checked above");
    let expected = report["delivery_mib_s"].as_f64().expect("checked above") / report["raw_delivery_mib_s"].as_f64().expect("checked above");
    assert!((ratio - expected).abs() < 1e-9, "delivery_ratio {ratio} is not delivery_mib_s / raw_delivery_mib_s");
    assert!(report["targets"]["delivery_ratio >= 0.5"].is_boolean(), "the delivery target is judged: {report}");
    // The raw baseline that also writes each copy, as a player does: its ratio is the same
    // rate over it, with as many readers.
    let written = report["delivery_mib_s"].as_f64().expect("checked above") / report["raw_delivery_written_mib_s"].as_f64().expect("checked above");
    assert!((report["delivery_written_ratio"].as_f64().expect("checked above") - written).abs() < 1e-9, "{report}");
    assert_eq!(delivery["raw_together_written"]["copies"].as_u64(), Some(players), "{report}");
    assert!(delivery["container_bytes"].as_u64() > delivery["content_bytes"].as_u64(), "the container carries tags and a signature: {report}");
    assert!(stderr.contains("9 delivery"), "the human table has a row for case 9: {stderr}");
}

#[test]
fn a_missing_nats_server_is_an_environment_error_that_says_what_to_do() {
    let output = Command::new(env!("CARGO_BIN_EXE_vouchsafe"))
        .args(["bench", "--vouchers", "1"])
        .env("NATS_SERVER", "/nonexistent/nats-server")
        .output()
        .expect("run vouchsafe bench");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NATS_SERVER") && stderr.contains("not a file"), "{stderr}");
}

#[test]
fn the_memory_probe_flag_needs_a_server_and_a_size() {
    let status = Command::new(env!("CARGO_BIN_EXE_vouchsafe")).args(["bench", "--rss-probe", "/tmp"]).status().expect("run vouchsafe bench");
    assert_eq!(status.code(), Some(2));
}
