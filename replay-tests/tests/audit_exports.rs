//! The auditor's exports agree with each other and with the live engine: replay totals =
//! live totals = the DSR's sales summaries; the exported log verifies alone; every
//! delivery can be proven to a rights holder who holds only the engine's public key. The
//! auditor's key directory has no engine private key (least privilege).

use gateways::audit::{self, ExportFormat};
use gateways::common::backend::BackendArgs;
use gateways::demo::{self, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_agree_and_need_no_engine_private_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = BackendArgs { data_dir: dir.path().join("data"), nats_url: None, stream: "VOUCHSAFE".into() };
    let engine_keys = dir.path().join("engine-keys");
    let summary = demo::run(DemoArgs {
        backend: backend.clone(),
        keys_dir: engine_keys.clone(),
        vouchers: 30,
        connect: None,
        engine_tls: Default::default(),
        node_tls: false,
    })
    .await
    .expect("demo");
    assert!(summary.audit_ok);

    // The auditor's directory: public key and royalty master key only.
    let auditor = dir.path().join("auditor");
    std::fs::create_dir_all(&auditor).expect("mkdir");
    for name in ["engine.pub.pem", "royalty-master.key"] {
        std::fs::copy(engine_keys.join(name), auditor.join(name)).expect("copy key");
    }
    assert!(!auditor.join("engine.pem").exists());

    let (report, exported, entries) = audit::rebuild(&backend, &auditor).await.expect("rebuild as auditor");
    assert!(report.ok());
    assert_eq!(entries.len() as u64, summary.royalty_entries);

    // Live totals (the engine's projection) equal the auditor's replay totals.
    let live_master = gateways::common::keys::load_royalty_master(&engine_keys).expect("master");
    let live_public = gateways::common::keys::load_engine_public(&engine_keys).expect("public");
    let log = backend.open().await.expect("log");
    let live = projections::Live::with_projections(projections::Projections::with_royalty_keys(&live_master, Some(live_public)));
    let runner = {
        let (live, log) = (live.clone(), std::sync::Arc::clone(&log));
        tokio::spawn(async move { live.run(log).await })
    };
    live.caught_up(log.last_seq().await.expect("seq")).await;
    runner.abort();
    // The embedded log is one process's at a time: release it before the next command opens it.
    let _ = runner.await;
    drop(log);
    let live_totals = live.read(|p| p.royalty.totals.clone());
    // Net of refunds: the demo refunds some delivered sales, each an adjustment entry.
    let replay_media_amount: i128 = report.totals["media"].values().map(|line| line.net_minor()).sum();
    let live_media_amount: i128 = live_totals.iter().filter(|((d, _), _)| *d == projections::royalty_log::Dimension::Media).map(|(_, l)| l.net_minor()).sum();
    assert_eq!(replay_media_amount, live_media_amount);
    let refunds: u64 = report.totals["media"].values().map(|line| line.refunds).sum();
    assert_eq!(refunds, summary.refunded, "one adjustment per refunded single-media sale");
    assert!(refunds > 0, "the demo refunded some sales");
    assert_eq!(report.totals["merchant"].len(), 3);

    // The DSR (Basic Audio Profile 1.2): its sales summaries net the same totals in their
    // currency, the refunds are SU01 returns, and the footer counts the lines.
    let dsr_path = dir.path().join("report.dsr");
    audit::write_export(ExportFormat::Dsr, &report, &exported, &entries, &dsr_path).expect("dsr");
    let dsr = std::fs::read_to_string(&dsr_path).expect("read dsr");
    let records = |kind: &str| -> Vec<Vec<String>> {
        dsr.lines().filter(|l| l.split('\t').next() == Some(kind)).map(|l| l.split('\t').map(str::to_string).collect()).collect()
    };
    let summaries = records("SY01.01");
    let sales_net: i128 = summaries
        .iter()
        .filter(|r| r[4] == "PayAsYouGoModel")
        .map(|r| audit::dsr::minor_units(&r[11], &r[10]).expect("an amount in the currency's units"))
        .sum();
    assert_eq!(sales_net, replay_media_amount);
    let returns: u64 = records("SU01").iter().map(|r| r[9].parse::<u64>().expect("Returns")).sum();
    assert_eq!(returns, refunds, "the adjustments are returns");
    let footer: Vec<&str> = dsr.lines().last().expect("footer").split('\t').collect();
    assert_eq!(footer[0], "FOOT");
    assert_eq!(footer[1], dsr.lines().count().to_string());
    assert_eq!(footer[3], summaries.len().to_string());
    assert!(dsr.starts_with("HEAD\tdsrf/"), "{dsr}");
    // Into a directory, under the profile's file name (no recipient given: its element is empty).
    let dsr_dir = dir.path().join("dsr");
    std::fs::create_dir_all(&dsr_dir).expect("mkdir");
    let written = audit::write_dsr(&report, &entries, &audit::dsr::DsrParties::default(), &dsr_dir).expect("dsr");
    let name = written.file_name().and_then(|name| name.to_str()).expect("a name").to_string();
    assert!(name.starts_with("DSR__PADPIDAUNREGISTERED_Downloads_") && name.contains("_Worldwide_1of1_") && name.ends_with(".tsv"), "{name}");

    // The exported log verifies alone, pinned to the witness file; a flipped entry does not.
    let log_path = dir.path().join("royalty.log.json");
    audit::write_export(ExportFormat::Log, &report, &exported, &entries, &log_path).expect("log");
    let pin = audit::pin_from_witness(&backend.data_dir.join(audit::WITNESS_FILE)).expect("pin");
    let verified = audit::verify_file(&log_path, &auditor, Some(pin)).expect("verify");
    assert!(verified.chain_ok, "{:?}", verified.first_bad);
    let mut tampered = projections::export::read_log(&std::fs::read(&log_path).expect("read")).expect("an export");
    tampered.entries[3].ciphertext[0] ^= 1;
    std::fs::write(&log_path, projections::export::write_lines(&tampered)).expect("write");
    let failed = audit::verify_file(&log_path, &auditor, Some(pin)).expect("verify runs");
    assert_eq!(failed.first_bad.map(|bad| bad.entry), Some(Some(3)));

    // Proofs for a delivered voucher check with the public key alone.
    let voucher = entries.iter().find(|e| e.kind == projections::royalty::UsageKind::Delivery).expect("a delivery").voucher_id.clone();
    let bundles = audit::prove(&backend, &auditor, &voucher).await.expect("prove");
    let proof_path = dir.path().join("proof.json");
    std::fs::write(&proof_path, serde_json::to_vec(&bundles).expect("json")).expect("write");
    let public_only = dir.path().join("public-only");
    std::fs::create_dir_all(&public_only).expect("mkdir");
    std::fs::copy(engine_keys.join("engine.pub.pem"), public_only.join("engine.pub.pem")).expect("copy");
    let checked = audit::check_proof_file(&proof_path, &public_only).expect("check");
    assert!(!checked.is_empty() && checked.iter().all(|r| r.as_ref().is_ok_and(|proven| proven.entry.voucher_id == voucher && proven.key_committed)));
}
