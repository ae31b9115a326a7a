use super::*;
use crate::note::{Checkpoint, NoteSigner, SignedNote};

fn checkpoint_note(size: u64) -> (NoteSigner, String) {
    let log = NoteSigner::generate("example.test/log").expect("key");
    let note = Checkpoint { origin: log.name().into(), size, root: [size as u8; 32] }.sign(&log).0;
    (log, note)
}

/// A cosignature verifies with the witness's vkey over the checkpoint text at its time, and
/// the key lines round-trip. Controls: another text, another time, another key of the same
/// name, a type-0x01 vkey.
#[test]
fn a_cosignature_verifies_and_binds_text_time_and_key() {
    let witness = Cosigner::generate("witness.test/w1").expect("key");
    let verifier = CosignatureVerifier::from_vkey(&witness.verifier().vkey()).expect("vkey");
    assert_eq!(Cosigner::from_private_line(&witness.to_private_line()).expect("line").verifier(), verifier);
    let (_, note) = checkpoint_note(5);
    let parsed = SignedNote::parse(note.as_bytes()).expect("note");
    let signature = witness.cosign(&parsed.text, 1_700_000_000);
    assert_eq!(signature.len(), 76);
    assert_eq!(verifier.verify(&parsed.text, &signature), Some(1_700_000_000));
    assert_eq!(verifier.verify(&parsed.text.replace("\n5\n", "\n6\n"), &signature), None);
    let mut retimed = signature;
    retimed[11] ^= 1;
    assert_eq!(verifier.verify(&parsed.text, &retimed), None);
    let stranger = Cosigner::generate("witness.test/w1").expect("key");
    assert_eq!(stranger.verifier().verify(&parsed.text, &signature), None);
    let log_vkey = NoteSigner::generate("witness.test/w1").expect("key").verifier().vkey();
    assert!(CosignatureVerifier::from_vkey(&log_vkey).is_err(), "a note key is not a cosignature key");
    assert!(format!("{witness:?}").contains("redacted"));
}

/// A policy counts distinct witness keys that cosigned; the log's own signature and
/// unknown lines count for nothing. Control: below the quorum, and a bad line of a known key.
#[test]
fn a_witness_policy_counts_distinct_valid_cosignatures() {
    let (_, note) = checkpoint_note(9);
    let witnesses: Vec<Cosigner> = (1..=3).map(|n| Cosigner::generate(&format!("witness.test/w{n}")).expect("key")).collect();
    let policy = WitnessPolicy { witnesses: witnesses.iter().map(Cosigner::verifier).collect(), quorum: 2 };
    let text = SignedNote::parse(note.as_bytes()).expect("note").text;
    let with = |signers: &[&Cosigner]| {
        let mut cosigned = note.clone();
        for signer in signers {
            cosigned.push_str(&signer.line(&text, 1_700_000_000));
        }
        SignedNote::parse(cosigned.as_bytes()).expect("note")
    };
    assert_eq!(policy.check(&with(&[&witnesses[0], &witnesses[2]])), Ok(vec!["witness.test/w1".to_string(), "witness.test/w3".to_string()]));
    assert!(policy.check(&with(&[&witnesses[1]])).is_err(), "one of two");
    assert!(policy.check(&with(&[])).is_err(), "the log's own signature is no cosignature");
    let stranger = Cosigner::generate("witness.test/w2").expect("key");
    assert!(policy.check(&with(&[&witnesses[0], &stranger])).is_err(), "an unknown key of a known name");
}
