use super::*;
use engine::crypto::RsaPublic;
use engine::crypto::test_keys;

fn master() -> SecretKey {
    SecretKey::from_bytes([21; 32])
}

fn entry(i: u64) -> Entry {
    Entry {
        kind: if i % 4 == 3 { UsageKind::Preview } else { UsageKind::Delivery },
        source_seq: 10 + i,
        timestamp_ms: 1_760_000_000_000,
        title: format!("T{i}"),
        artist: "A".into(),
        authors: vec![],
        length_ms: 1,
        sale_price_minor: 100,
        currency: "EUR".into(),
        consumer_cert: "c".into(),
        voucher_id: format!("v{}", i / 2),
        media_id: "m".into(),
        image_descriptor: String::new(),
        merchant: "shop".into(),
        rights_agent: "agent".into(),
        distributor: "d".into(),
        owner: "o".into(),
        played_ms: 0,
    }
}

/// 10 entries, seals over 0..=3 and 4..=7, entries 8 and 9 unsealed.
fn sample() -> ExportedLog {
    let mut chain = Chain::start(&master(), 1);
    let entries: Vec<ChainedEntry> = (0..10).map(|i| chain.append(&entry(i))).collect();
    let mut digests = Vec::new();
    for i in 0..10 {
        let previous = digests.last().copied().unwrap_or([0; 32]);
        digests.push(usage_digest(&previous, &entry(i)));
    }
    let mut seals = Vec::new();
    let mut prev = [0u8; 32];
    for (first, last) in [(0usize, 3usize), (4, 7)] {
        let ys: Vec<[u8; 32]> = entries[first..=last].iter().map(|e| e.y).collect();
        let mut seal = RightsReportSealed {
            epoch: 1,
            first_entry: first as u64,
            last_entry: last as u64,
            head_y: entries[last].y,
            head_z: entries[last].z,
            merkle_root: royalty::merkle_root(&ys),
            totals_digest: digests[last],
            prev_seal_hash: prev,
            engine_key_id: String::new(),
            signature: vec![],
            last_stream_seq: 100 + last as u64,
            stream_head: [1; 32],
            checkpoint: None,
        };
        royalty::sign_seal(&test_keys::fixed_rsa(), &mut seal).expect("sign");
        prev = Report::seal_hash(&seal);
        seals.push(ExportedSeal::from(&seal));
    }
    ExportedLog { format: LOG_FORMAT.into(), epoch: 1, entries, seals }
}

/// The same hex string with its first digit changed.
fn flip_first_digit(text: &str) -> String {
    match text.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => format!("0{}", &text[1..]),
    }
}

fn public() -> RsaPublic {
    test_keys::fixed_rsa().public()
}

fn last_seal_hash(log: &ExportedLog) -> [u8; 32] {
    Report::seal_hash(&log.seals.last().expect("seal").to_seal().expect("seal"))
}

#[track_caller]
fn fails_at(log: &ExportedLog, pin: Option<[u8; 32]>, entry: Option<u64>, seal: Option<u64>) -> String {
    let report = verify_log(log, &master(), &public(), pin);
    let bad = report.first_bad.clone().expect("tampering caught");
    assert!(!report.chain_ok);
    assert_eq!((bad.entry, bad.seal), (entry, seal), "{bad:?}");
    bad.reason
}

#[test]
fn a_clean_log_verifies_with_and_without_a_pin() {
    let log = sample();
    let report = verify_log(&log, &master(), &public(), Some(last_seal_hash(&log)));
    assert!(report.chain_ok, "{:?}", report.first_bad);
    assert_eq!((report.entries, report.seals_verified, report.unsealed_entries), (10, 2, 2));
    let json = serde_json::to_string(&log).expect("json");
    assert_eq!(serde_json::from_str::<ExportedLog>(&json).expect("parse"), log);
}

#[test]
fn flipped_bits_in_entries_and_seals_are_caught_at_their_position() {
    let original = sample();
    let mut log = original.clone();
    log.entries[5].ciphertext[0] ^= 1;
    assert_ne!(log, original);
    fails_at(&log, None, Some(5), None);

    let mut log = original.clone();
    log.entries[2].z[7] ^= 1;
    fails_at(&log, None, Some(2), None);

    let mut log = original.clone();
    let mut signature = hex::decode(&log.seals[1].signature).expect("hex");
    signature[3] ^= 1;
    log.seals[1].signature = hex::encode(signature);
    assert!(fails_at(&log, None, None, Some(1)).contains("signature"));
}

#[test]
fn removed_reordered_inserted_duplicated_entries_are_caught() {
    let original = sample();
    let mut removed = original.clone();
    removed.entries.remove(3);
    fails_at(&removed, None, Some(3), None);
    let mut reordered = original.clone();
    reordered.entries.swap(6, 7);
    fails_at(&reordered, None, Some(6), None);
    let mut duplicated = original.clone();
    duplicated.entries.insert(5, original.entries[4].clone());
    fails_at(&duplicated, None, Some(5), None);
    let mut inserted = original.clone();
    let mut forged = Chain::start(&SecretKey::from_bytes([3; 32]), 1).append(&entry(0));
    forged.index = 2;
    inserted.entries.insert(2, forged);
    fails_at(&inserted, None, Some(2), None);
}

#[test]
fn truncation_is_caught_by_the_seals_or_the_pin() {
    let original = sample();
    let pin = last_seal_hash(&original);
    // Entries cut inside a sealed range: the seal covers entries that are missing.
    let mut cut = original.clone();
    cut.entries.truncate(6);
    assert!(fails_at(&cut, None, None, Some(1)).contains("covers entries"));
    // Entries and the last seal cut: only the pin can tell.
    let mut cut_cleanly = original.clone();
    cut_cleanly.entries.truncate(4);
    cut_cleanly.seals.truncate(1);
    assert!(verify_log(&cut_cleanly, &master(), &public(), None).chain_ok, "known limit without a pin");
    assert!(fails_at(&cut_cleanly, Some(pin), Some(4), None).contains("pinned"));
    // Dropping just the last seal while pinned to it.
    let mut dropped = original.clone();
    dropped.seals.pop();
    fails_at(&dropped, Some(pin), Some(4), None);
    // Removing the first seal breaks the link of the second.
    let mut unlinked = original.clone();
    unlinked.seals.remove(0);
    fails_at(&unlinked, None, None, Some(0));
}

#[test]
fn foreign_or_dishonest_seals_and_other_epochs_are_caught() {
    let original = sample();
    let mut foreign = original.clone();
    let mut seal = foreign.seals[0].to_seal().expect("seal");
    royalty::sign_seal(&test_keys::fixed_rsa_2(), &mut seal).expect("sign");
    foreign.seals[0] = ExportedSeal::from(&seal);
    assert!(fails_at(&foreign, None, None, Some(0)).contains("signature"));

    let mut wrong_totals = original.clone();
    let mut seal = wrong_totals.seals[1].to_seal().expect("seal");
    seal.totals_digest[0] ^= 1;
    royalty::sign_seal(&test_keys::fixed_rsa(), &mut seal).expect("sign");
    wrong_totals.seals[1] = ExportedSeal::from(&seal);
    assert!(fails_at(&wrong_totals, None, None, Some(1)).contains("totals"));

    // An exported log of another epoch's key: the chain fails at its first entry.
    let mut other_epoch = original.clone();
    other_epoch.epoch = 2;
    fails_at(&other_epoch, None, Some(0), None);
    assert!(!verify_log(&original, &SecretKey::from_bytes([4; 32]), &public(), None).chain_ok, "another master key");
}

#[test]
fn inclusion_proofs_verify_with_the_public_key_alone_and_any_altered_byte_fails() {
    let log = sample();
    // Entries 4 and 5 are v2's two deliveries, both under the second seal.
    let bundles = prove(&log, &master(), &public(), "v2").expect("prove");
    assert_eq!(bundles.iter().map(|b| b.entry_index).collect::<Vec<_>>(), vec![4, 5]);
    for bundle in &bundles {
        let proven = check_proof(bundle, &public()).expect("valid bundle");
        assert_eq!(proven, entry(bundle.entry_index));
        assert!(check_proof(bundle, &test_keys::fixed_rsa_2().public()).is_err(), "another engine key");
        let json = serde_json::to_string(bundle).expect("json");
        // Flip one hex digit in every string field in turn.
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        let mut altered_any = 0;
        for field in ["y_prev", "ciphertext", "y", "entry_key"] {
            let mut altered = value.clone();
            let text = altered[field].as_str().expect("hex field").to_string();
            let flipped = flip_first_digit(&text);
            altered[field] = serde_json::Value::String(flipped);
            let altered: ProofBundle = serde_json::from_value(altered).expect("still a bundle");
            assert_ne!(&altered, bundle);
            assert!(check_proof(&altered, &public()).is_err(), "altered {field} still verifies");
            altered_any += 1;
        }
        if let Some(first) = bundle.merkle_path.first() {
            let mut altered = bundle.clone();
            altered.merkle_path[0] = flip_first_digit(first);
            assert!(check_proof(&altered, &public()).is_err(), "altered path");
        }
        let mut moved = bundle.clone();
        moved.entry_index += 1;
        assert!(check_proof(&moved, &public()).is_err(), "another position");
        assert_eq!(altered_any, 4);
    }
}

#[test]
fn proving_unsealed_or_unknown_deliveries_says_why() {
    let log = sample();
    assert!(matches!(prove(&log, &master(), &public(), "v4"), Err(ProveError::NotSealed { entry: 8, .. })));
    assert!(matches!(prove(&log, &master(), &public(), "nope"), Err(ProveError::NotFound(_))));
    let mut tampered = log.clone();
    tampered.entries[0].y[0] ^= 1;
    assert!(matches!(prove(&tampered, &master(), &public(), "v0"), Err(ProveError::Unverified(_))));
}

/// Where each line of a format-2 file starts, and which entry or seal it holds.
fn line_starts(bytes: &[u8]) -> Vec<usize> {
    std::iter::once(0).chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1)).collect()
}

#[test]
fn a_file_of_one_entry_a_line_round_trips_and_old_exports_still_read() {
    let log = sample();
    let bytes = write_lines(&log);
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1 + 10 + 2 + 1, "a header, ten entries, two seals, the end");
    assert!(bytes.starts_with(b"{\"format\":\"vouchsafe-royalty-log/2\""));
    assert_eq!(read_log(&bytes).expect("reads"), log);
    let old = serde_json::to_vec_pretty(&log).expect("format 1");
    assert_eq!(read_log(&old).expect("format 1 still reads"), log);
}

/// Every cut of a format-2 file fails at the entry or seal whose line it cuts (or the first
/// missing after a cut at a line's end), with that line's byte offset; entries before it
/// verify. A cut format-1 file fails with a byte offset.
#[test]
fn every_cut_names_the_entry_or_seal_and_byte_where_the_damage_starts() {
    let log = sample();
    let bytes = write_lines(&log);
    let starts = line_starts(&bytes);
    for cut in 0..bytes.len() {
        let damage = read_log(&bytes[..cut]).expect_err("a cut file is damaged");
        // The line the cut falls in (line 0 is the header), or the first missing one.
        let line = starts.iter().rposition(|&start| start <= cut).expect("a line");
        let (entry, seal) = match line {
            0 => (Some(0), None),
            line if line <= 10 => (Some(line as u64 - 1), None),
            // A seal's line, or the end line (the first missing is the seal after the last).
            line => (None, Some((line as u64 - 11).min(2))),
        };
        assert_eq!((damage.entry, damage.seal), (entry, seal), "cut at {cut}: {}", damage.reason);
        assert_eq!(damage.byte_offset, starts[line] as u64, "cut at {cut}");
        let report = verify_damaged(&damage, &master(), &public(), None);
        assert!(!report.chain_ok);
        let bad = report.first_bad.expect("the damage");
        assert_eq!((bad.entry, bad.seal, bad.byte_offset), (damage.entry, damage.seal, Some(damage.byte_offset)), "{}", bad.reason);
    }
    let old = serde_json::to_vec_pretty(&log).expect("format 1");
    for cut in [1, old.len() / 3, old.len() - 2] {
        let damage = read_log(&old[..cut]).expect_err("a cut format-1 file is damaged");
        assert!(damage.byte_offset <= cut as u64 && damage.byte_offset + 2 >= cut as u64, "cut at {cut}: offset {}", damage.byte_offset);
    }
}

/// Whether two logs say the same (a seal's hex fields may differ in case).
fn same_content(a: &ExportedLog, b: &ExportedLog) -> bool {
    let seals = |log: &ExportedLog| log.seals.iter().map(|seal| seal.to_seal().ok()).collect::<Vec<_>>();
    a.epoch == b.epoch && a.entries == b.entries && seals(a) == seals(b)
}

/// A single-bit flip in every byte of a format-2 file (a different bit each) is caught: the
/// file no longer parses (damage at the flipped line), or it parses and the verification
/// fails, or it parses to the very same log (a hex digit's case). Never a panic, never a
/// pass of another log.
#[test]
fn every_bit_flip_is_caught_at_its_line_or_by_the_verification() {
    let log = sample();
    let bytes = write_lines(&log);
    let starts = line_starts(&bytes);
    let (mut unparsed, mut unverified, mut same) = (0, 0, 0);
    for position in 0..bytes.len() {
        let bit = (position * 5 + 3) % 8;
        let mut flipped = bytes.clone();
        flipped[position] ^= 1 << bit;
        match read_log(&flipped) {
            Err(damage) => {
                let line_start = starts[starts.iter().rposition(|&start| start <= position).expect("a line")] as u64;
                // A flipped newline moves line boundaries: the damage is at or before it.
                assert!(
                    damage.byte_offset <= position as u64 + 1 && (damage.byte_offset >= line_start || bytes[position] == b'\n' || flipped[position] == b'\n'),
                    "flip at {position}.{bit}: {}",
                    damage.reason
                );
                assert!(!verify_damaged(&damage, &master(), &public(), None).chain_ok);
                unparsed += 1;
            }
            Ok(parsed) if same_content(&parsed, &log) => same += 1,
            Ok(parsed) => {
                assert!(!verify_log(&parsed, &master(), &public(), None).chain_ok, "flip at {position}.{bit} still verifies");
                unverified += 1;
            }
        }
    }
    assert!(unparsed > 0 && unverified > 0, "{unparsed} unparsed, {unverified} failed verification, {same} unchanged");
}

/// As `sample`, each seal a checkpoint signed with `note_key()`.
fn sample_checkpointed() -> ExportedLog {
    let mut chain = Chain::start(&master(), 1);
    let mut tree = engine::tlog::Tree::default();
    let mut entries = Vec::new();
    for i in 0..10 {
        let (chained, commitment) = chain.append_committed(&entry(i).encode(), None);
        tree.push(royalty::tree_leaf_hash(&chained, &commitment));
        entries.push(chained);
    }
    let mut log = sample();
    log.entries = entries;
    let mut prev = [0u8; 32];
    for exported in &mut log.seals {
        let mut seal = exported.to_seal().expect("seal");
        let size = seal.last_entry + 1;
        seal.head_y = log.entries[seal.last_entry as usize].y;
        seal.head_z = log.entries[seal.last_entry as usize].z;
        seal.prev_seal_hash = prev;
        seal.checkpoint = Some(SealCheckpoint {
            origin: String::new(),
            tree_size: size,
            root: tree.root(size).expect("root"),
            signature: Vec::new(),
            last_leaf_proof: tree.inclusion_proof(size - 1, size).expect("proof"),
        });
        engine::seal::sign_seal_with(&test_keys::fixed_rsa(), Some(&note_key()), &mut seal).expect("sign");
        prev = Report::seal_hash(&seal);
        *exported = ExportedSeal::from(&seal);
    }
    log
}

fn note_key() -> engine::note::NoteSigner {
    engine::note::NoteSigner::new("vouchsafe.test/royalty", engine::crypto::Ed25519Private::from_seed(&[5; 32])).expect("key")
}

/// A checkpointed seal's bundle proves the entry's leaf, which commits to its key, in the
/// signed tree: another key is refused by the tree before any decryption, and a bundle
/// without the tree proof (a downgrade to format 1) is refused. Old bundles still check,
/// flagged as not committing their key.
#[test]
fn proofs_of_checkpointed_seals_do_not_trust_the_key_they_carry() {
    let log = sample_checkpointed();
    assert!(verify_log_with(&log, &master(), &public(), Some(&note_key().verifier()), None).chain_ok);
    let bundles = prove(&log, &master(), &public(), "v2").expect("prove");
    for bundle in &bundles {
        assert_eq!(bundle.format, PROOF_FORMAT_TREE);
        let proven = check_proof_with(bundle, &public(), Some(&note_key().verifier())).expect("valid bundle");
        assert!(proven.key_committed);
        assert_eq!(proven.entry, entry(bundle.entry_index));

        let mut other_key = bundle.clone();
        other_key.entry_key = hex::encode([9u8; 32]);
        let reason = check_proof_with(&other_key, &public(), None).expect_err("another key");
        assert!(reason.contains("tree"), "refused by the tree, not by the decryption: {reason}");
        let mut downgraded = bundle.clone();
        (downgraded.format, downgraded.tree_proof, downgraded.z) = (PROOF_FORMAT.into(), None, None);
        assert!(check_proof_with(&downgraded, &public(), None).is_err(), "a bundle without its tree proof");
        let mut altered_z = bundle.clone();
        altered_z.z = altered_z.z.as_deref().map(flip_first_digit);
        assert!(check_proof_with(&altered_z, &public(), None).is_err(), "another Z");
        let stranger = engine::note::NoteSigner::new("vouchsafe.test/royalty", engine::crypto::Ed25519Private::from_seed(&[6; 32])).expect("key");
        assert!(check_proof_with(bundle, &public(), Some(&stranger.verifier())).is_err(), "another checkpoint key");
    }
    // A seal from before checkpoints: the bundle checks, its key flagged as not committed.
    let old = prove(&sample(), &master(), &public(), "v2").expect("prove");
    assert!(old.iter().all(|bundle| bundle.format == PROOF_FORMAT && check_proof_with(bundle, &public(), None).is_ok_and(|proven| !proven.key_committed)));
}

/// `.tlog-proof` files check with the checkpoint key alone and open to the entry; every
/// altered part is refused: the extra data (ciphertext, key, Z), the index, a proof hash,
/// the checkpoint (root, or another key's signature); an unsealed delivery has none.
#[test]
fn tlog_proofs_check_with_the_checkpoint_key_alone_and_refuse_any_alteration() {
    let log = sample_checkpointed();
    let proofs = prove_tlog(&log, &master(), &public(), "v2").expect("prove");
    assert_eq!(proofs.iter().map(|(index, _)| *index).collect::<Vec<_>>(), vec![4, 5]);
    let verifier = note_key().verifier();
    for (index, text) in &proofs {
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra "), "{text}");
        let proven = check_tlog_proof(text, &verifier).expect("valid proof");
        assert_eq!(proven.entry, entry(*index));
        let parsed = engine::note::TlogProof::parse(text).expect("parses");
        let mut extra: serde_json::Value = serde_json::from_slice(parsed.extra.as_deref().expect("extra")).expect("json");
        for field in ["y_prev", "ciphertext", "z", "entry_key"] {
            let mut altered = extra.clone();
            altered[field] = serde_json::Value::String(flip_first_digit(altered[field].as_str().expect("hex")));
            let altered = engine::note::TlogProof { extra: Some(serde_json::to_vec(&altered).expect("json")), ..parsed.clone() };
            assert!(check_tlog_proof(&altered.format(), &verifier).is_err(), "altered {field}");
        }
        extra["bound_seq"] = serde_json::json!(99);
        let rebound = engine::note::TlogProof { extra: Some(serde_json::to_vec(&extra).expect("json")), ..parsed.clone() };
        assert!(check_tlog_proof(&rebound.format(), &verifier).is_err(), "another bound sequence");
        let moved = engine::note::TlogProof { index: parsed.index + 1, ..parsed.clone() };
        assert!(check_tlog_proof(&moved.format(), &verifier).is_err(), "another index");
        let mut bent = parsed.clone();
        bent.proof[0][0] ^= 1;
        assert!(check_tlog_proof(&bent.format(), &verifier).is_err(), "an altered proof hash");
        let stripped = engine::note::TlogProof { extra: None, ..parsed.clone() };
        assert!(check_tlog_proof(&stripped.format(), &verifier).is_err(), "no extra data");
        let checkpoint =
            engine::note::Checkpoint::parse(engine::note::SignedNote::parse(parsed.checkpoint.as_bytes()).expect("note").text.as_str()).expect("checkpoint");
        let rerooted = engine::note::Checkpoint { root: [1; 32], ..checkpoint.clone() };
        let forged = engine::note::TlogProof { checkpoint: rerooted.note(&checkpoint.origin, &[0; 68]), ..parsed.clone() };
        assert!(check_tlog_proof(&forged.format(), &verifier).is_err(), "another root, not signed");
        let stranger = engine::note::NoteSigner::new("vouchsafe.test/royalty", engine::crypto::Ed25519Private::from_seed(&[6; 32])).expect("key");
        assert!(check_tlog_proof(text, &stranger.verifier()).is_err(), "another checkpoint key");
    }
    assert!(matches!(prove_tlog(&log, &master(), &public(), "v4"), Err(ProveError::NotSealed { entry: 8, .. })));
    assert!(matches!(prove_tlog(&sample(), &master(), &public(), "v2"), Err(ProveError::NotSealed { .. })), "no checkpoint before checkpoints");
}
