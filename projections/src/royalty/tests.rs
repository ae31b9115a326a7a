use super::*;
use engine::crypto::test_keys;
use engine::domain::event::RightsReportSealed;

fn entry(i: u64) -> Entry {
    Entry {
        kind: if i.is_multiple_of(3) { UsageKind::Preview } else { UsageKind::Delivery },
        source_seq: 100 + i,
        timestamp_ms: 1_750_000_000_000 + i as i64,
        title: format!("Track {i}"),
        artist: "Artist".into(),
        authors: vec!["A".into(), "B".into()],
        length_ms: 180_000,
        sale_price_minor: 99 * i,
        currency: "EUR".into(),
        consumer_cert: format!("c{i}"),
        voucher_id: format!("v{i}"),
        media_id: "md1".into(),
        image_descriptor: "cover.jpg".into(),
        merchant: "m1".into(),
        rights_agent: "agent".into(),
        distributor: "dist".into(),
        owner: "label".into(),
        played_ms: 30_000,
    }
}

fn master() -> SecretKey {
    SecretKey::from_bytes([42; 32])
}

fn log(n: u64) -> Vec<ChainedEntry> {
    let mut chain = Chain::start(&master(), 1);
    (0..n).map(|i| chain.append(&entry(i))).collect()
}

/// Verifies a whole log; the first fault, if any.
fn verify(master: &SecretKey, entries: &[ChainedEntry]) -> Result<Vec<Entry>, ChainFault> {
    let mut chain = Chain::start(master, 1);
    entries.iter().map(|chained| chain.verify_next(chained)).collect()
}

/// The attack: a chain rebuilt after a lost tail encrypts a different entry at the same
/// index under the same `K_j`; with the fixed nonce (control) that is a nonce reuse, with
/// the nonce bound to the source sequence it is not. A binding that is altered, or that
/// names another sequence than the entry's, does not verify.
#[test]
fn an_entry_bound_to_its_stream_sequence_never_reuses_a_nonce() {
    let (first, rebuilt) = (entry(1), Entry { source_seq: 999, ..entry(7) });
    let fixed = (Chain::start(&master(), 1).append_encoded(&first.encode()), Chain::start(&master(), 1).append_encoded(&rebuilt.encode()));
    assert_eq!(nonce(fixed.0.bound_seq), nonce(fixed.1.bound_seq), "control: two entries at index 0 under one key and one nonce");
    let bound = (
        Chain::start(&master(), 1).append_encoded_bound(&first.encode(), Some(first.source_seq)),
        Chain::start(&master(), 1).append_encoded_bound(&rebuilt.encode(), Some(rebuilt.source_seq)),
    );
    assert_ne!(nonce(bound.0.bound_seq), nonce(bound.1.bound_seq));
    assert_eq!(verify(&master(), std::slice::from_ref(&bound.0)).expect("verifies"), vec![first.clone()]);
    let altered = ChainedEntry { bound_seq: Some(first.source_seq + 1), ..bound.0.clone() };
    assert!(verify(&master(), &[altered]).is_err(), "an altered binding does not decrypt");
    let misbound = Chain::start(&master(), 1).append_encoded_bound(&first.encode(), Some(5));
    assert!(verify(&master(), &[misbound]).expect_err("names sequence 5").reason.contains("another stream sequence"));
}

#[test]
fn a_chain_verifies_and_decrypts_to_its_entries() {
    let entries = log(12);
    let plain = verify(&master(), &entries).expect("verifies");
    assert_eq!(plain, (0..12).map(entry).collect::<Vec<_>>());
}

#[test]
fn any_flipped_bit_in_any_entry_is_caught_at_that_entry() {
    let original = log(6);
    for index in 0..original.len() {
        for part in ["ciphertext", "y", "z"] {
            let mut entries = original.clone();
            let target = &mut entries[index];
            match part {
                "ciphertext" => target.ciphertext[3] ^= 0x01,
                "y" => target.y[0] ^= 0x80,
                _ => target.z[31] ^= 0x01,
            }
            assert_ne!(entries, original, "negative control: the mutation changed the log");
            let fault = verify(&master(), &entries).expect_err("tamper caught");
            assert_eq!(fault.index, index as u64, "{part} flipped in entry {index}: {fault}");
        }
    }
}

#[test]
fn removed_reordered_inserted_entries_are_caught_at_the_first_bad_position() {
    let original = log(6);
    let mut removed = original.clone();
    removed.remove(2);
    assert_eq!(verify(&master(), &removed).expect_err("removal").index, 2);

    let mut reordered = original.clone();
    reordered.swap(3, 4);
    assert_eq!(verify(&master(), &reordered).expect_err("reorder").index, 3);

    // An attacker without A_j forges an entry with a key of their own.
    let mut forged_chain = Chain::start(&SecretKey::from_bytes([7; 32]), 1);
    let mut inserted = original.clone();
    let mut forged = forged_chain.append(&entry(99));
    forged.index = 2;
    inserted.insert(2, forged);
    assert_eq!(verify(&master(), &inserted).expect_err("insertion").index, 2);

    // Renumbering after a removal does not help: the hash chain breaks.
    let mut renumbered = removed.clone();
    for (i, chained) in renumbered.iter_mut().enumerate() {
        chained.index = i as u64;
    }
    assert_eq!(verify(&master(), &renumbered).expect_err("renumbered removal").index, 2);
}

#[test]
fn the_wrong_master_key_or_epoch_fails_at_the_first_entry() {
    let entries = log(3);
    assert_eq!(verify(&SecretKey::from_bytes([1; 32]), &entries).expect_err("wrong key").index, 0);
    let mut other_epoch = Chain::start(&master(), 2);
    assert_eq!(other_epoch.verify_next(&entries[0]).expect_err("wrong epoch").index, 0);
}

#[test]
fn known_limit_a_truncated_tail_passes_the_chain_alone() {
    // This is why seals and pins exist: the MAC chain cannot see missing trailing entries.
    let entries = log(5);
    assert!(verify(&master(), &entries[..3]).is_ok());
}

#[test]
fn merkle_proofs_verify_for_every_leaf_and_fail_when_altered() {
    for size in 1..=17usize {
        let ys: Vec<[u8; 32]> = (0..size).map(|i| crypto::hash(&i.to_le_bytes())).collect();
        let root = merkle_root(&ys);
        for index in 0..size {
            let path = merkle_proof(&ys, index);
            assert!(verify_merkle_proof(&ys[index], index, size, &path, &root), "size {size} index {index}");
            let mut wrong_leaf = ys[index];
            wrong_leaf[0] ^= 1;
            assert!(!verify_merkle_proof(&wrong_leaf, index, size, &path, &root));
            if let Some(first) = path.first() {
                let mut bad_path = path.clone();
                bad_path[0] = {
                    let mut h = *first;
                    h[5] ^= 1;
                    h
                };
                assert!(!verify_merkle_proof(&ys[index], index, size, &bad_path, &root));
            }
            if size > 1 {
                assert!(!verify_merkle_proof(&ys[index], (index + 1) % size, size, &path, &root), "wrong position");
            }
        }
    }
    // A leaf cannot pose as an inner node (domain separation).
    let ys: Vec<[u8; 32]> = (0..4u8).map(|i| [i; 32]).collect();
    assert_ne!(merkle_root(&ys[..2]), leaf_hash(&node_hash(&leaf_hash(&ys[0]), &leaf_hash(&ys[1]))));
}

fn seal_for(entries: &[ChainedEntry], prev: [u8; 32]) -> RightsReportSealed {
    let ys: Vec<[u8; 32]> = entries.iter().map(|e| e.y).collect();
    let last = entries.last().expect("a seal covers at least one entry");
    let mut seal = RightsReportSealed {
        epoch: 1,
        first_entry: entries[0].index,
        last_entry: last.index,
        head_y: last.y,
        head_z: last.z,
        merkle_root: merkle_root(&ys),
        totals_digest: [9; 32],
        prev_seal_hash: prev,
        engine_key_id: String::new(),
        signature: vec![],
        last_stream_seq: 500,
        stream_head: [8; 32],
        checkpoint: None,
    };
    sign_seal(&test_keys::fixed_rsa(), &mut seal).expect("sign");
    seal
}

#[test]
fn seals_verify_with_the_engine_key_only_and_cover_every_field() {
    let entries = log(4);
    let seal = seal_for(&entries, [0; 32]);
    let public = test_keys::fixed_rsa().public();
    assert!(verify_seal(&public, &seal));
    assert!(!verify_seal(&test_keys::fixed_rsa_2().public(), &seal), "another key");

    let mut resigned_by_other = seal.clone();
    sign_seal(&test_keys::fixed_rsa_2(), &mut resigned_by_other).expect("sign");
    assert!(!verify_seal(&public, &resigned_by_other), "a seal signed with another key is rejected");

    type Mutation = Box<dyn Fn(&mut RightsReportSealed)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("epoch", Box::new(|s| s.epoch += 1)),
        ("first_entry", Box::new(|s| s.first_entry += 1)),
        ("last_entry", Box::new(|s| s.last_entry -= 1)),
        ("head_y", Box::new(|s| s.head_y[0] ^= 1)),
        ("head_z", Box::new(|s| s.head_z[0] ^= 1)),
        ("merkle_root", Box::new(|s| s.merkle_root[0] ^= 1)),
        ("totals_digest", Box::new(|s| s.totals_digest[0] ^= 1)),
        ("prev_seal_hash", Box::new(|s| s.prev_seal_hash[0] ^= 1)),
        ("last_stream_seq", Box::new(|s| s.last_stream_seq += 1)),
        ("stream_head", Box::new(|s| s.stream_head[0] ^= 1)),
        ("signature", Box::new(|s| s.signature[10] ^= 1)),
        ("checkpoint", Box::new(|s| s.checkpoint = Some(checkpoint()))),
    ];
    for (field, mutate) in mutations {
        let mut altered = seal.clone();
        mutate(&mut altered);
        assert_ne!(altered, seal, "negative control for {field}");
        assert!(!verify_seal(&public, &altered), "altered {field} still verifies");
    }
}

fn checkpoint() -> engine::domain::event::SealCheckpoint {
    engine::domain::event::SealCheckpoint { origin: "o".into(), tree_size: 4, root: [1; 32], signature: vec![2; 68], last_leaf_proof: vec![[3; 32]] }
}

/// A seal with a checkpoint: the RSA signature covers every checkpoint field too.
#[test]
fn the_seal_signature_covers_its_checkpoint() {
    let mut seal = seal_for(&log(4), [0; 32]);
    seal.checkpoint = Some(checkpoint());
    sign_seal(&test_keys::fixed_rsa(), &mut seal).expect("sign");
    let public = test_keys::fixed_rsa().public();
    assert!(verify_seal(&public, &seal));
    type Mutation = Box<dyn Fn(&mut engine::domain::event::SealCheckpoint)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("origin", Box::new(|c| c.origin.push('x'))),
        ("tree_size", Box::new(|c| c.tree_size += 1)),
        ("root", Box::new(|c| c.root[0] ^= 1)),
        ("signature", Box::new(|c| c.signature[0] ^= 1)),
        ("last_leaf_proof", Box::new(|c| c.last_leaf_proof[0][0] ^= 1)),
    ];
    for (field, mutate) in mutations {
        let mut altered = seal.clone();
        mutate(altered.checkpoint.as_mut().expect("checkpointed"));
        assert!(!verify_seal(&public, &altered), "altered checkpoint {field} still verifies");
        assert_ne!(engine::domain::report::Report::seal_hash(&altered), engine::domain::report::Report::seal_hash(&seal), "{field}");
    }
    let mut dropped = seal.clone();
    dropped.checkpoint = None;
    assert!(!verify_seal(&public, &dropped), "a dropped checkpoint");
}

#[test]
fn a_seal_detects_a_truncated_tail_that_the_chain_misses() {
    let entries = log(6);
    let seal = seal_for(&entries, [0; 32]);
    let truncated = &entries[..5];
    assert!(verify(&master(), truncated).is_ok(), "the chain alone passes");
    let last = truncated.last().expect("entries");
    assert!(last.index < seal.last_entry && last.y != seal.head_y, "the seal names a head the truncated log lacks");
}

#[test]
fn chained_entries_round_trip_through_json_and_chain_debug_hides_the_secret() {
    let entries = log(2);
    let json = serde_json::to_string(&entries).expect("json");
    let back: Vec<ChainedEntry> = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, entries);
    let chain = Chain::start(&master(), 1);
    let debug = format!("{chain:?}");
    assert!(!debug.contains(&hex::encode(epoch_secret(&master(), 1).expose())) && debug.contains("redacted"));
}
