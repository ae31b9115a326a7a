use super::*;

// The example of Go's reference implementation (golang.org/x/mod/sumdb/note): its key
// files and the note it signs, byte for byte (Ed25519 is deterministic).
const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

#[test]
fn keys_ids_and_signatures_match_the_go_reference_byte_for_byte() {
    let signer = NoteSigner::from_private_line(SKEY).expect("the reference private key");
    assert_eq!(signer.verifier().vkey(), VKEY, "key id and vkey encoding");
    assert_eq!(signer.to_private_line(), SKEY);
    let note = SignedNote { text: TEXT.into(), signatures: vec![("PeterNeumann".into(), signer.sign(TEXT).to_vec())] };
    assert_eq!(note.format(), NOTE);
    let verifier = NoteVerifier::from_vkey(VKEY).expect("the reference vkey");
    let parsed = SignedNote::parse(NOTE.as_bytes()).expect("parses");
    assert_eq!(parsed.open(&verifier).expect("verifies"), TEXT);
    assert!(!format!("{signer:?}").contains("AYEKFALV"), "a signer never prints its key");
}

#[test]
fn altered_notes_wrong_keys_and_bad_key_lines_are_refused() {
    let verifier = NoteVerifier::from_vkey(VKEY).expect("vkey");
    let altered = NOTE.replacen("cryptography", "cryptograph", 1);
    assert!(matches!(SignedNote::parse(altered.as_bytes()).expect("parses").open(&verifier), Err(NoteError::BadSignature(_))));
    let other = NoteSigner::generate("PeterNeumann").expect("key");
    assert!(matches!(SignedNote::parse(NOTE.as_bytes()).expect("parses").open(&other.verifier()), Err(NoteError::Unsigned(_))), "another key, same name");
    // An unknown key's signature beside the known one is ignored; a bad known one is not.
    let mut both = SignedNote::parse(NOTE.as_bytes()).expect("parses");
    both.signatures.insert(0, ("someone.else".into(), vec![1, 2, 3, 4, 5]));
    assert!(both.open(&verifier).is_ok());
    for bad in ["", "no signatures\n", "text\n\n— PeterNeumann !!!\n", "text\n\n\u{2014} PeterNeumann AAAA", "te\u{7}xt\n\n\u{2014} a AAAAAA==\n"] {
        assert!(SignedNote::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    for bad in [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
    ] {
        assert!(NoteVerifier::from_vkey(bad).is_err(), "{bad}");
    }
    assert!(NoteSigner::from_private_line(&SKEY.replace("c74f20a3", "c74f20a4")).is_err());
    assert!(NoteSigner::generate("with+plus").is_err());
}

#[test]
fn checkpoints_sign_parse_and_refuse_wrong_origins_sizes_and_roots() {
    let signer = NoteSigner::generate("vouchsafe.example/royalty").expect("key");
    let checkpoint = Checkpoint { origin: "vouchsafe.example/royalty".into(), size: 20852163, root: [7; 32] };
    let (note, signature) = checkpoint.sign(&signer);
    assert_eq!(note, checkpoint.note(signer.name(), &signature));
    assert!(note.starts_with("vouchsafe.example/royalty\n20852163\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n\n\u{2014} vouchsafe.example/royalty "));
    assert_eq!(Checkpoint::open(note.as_bytes(), &signer.verifier()), Ok(checkpoint.clone()));
    // Controls: another size or root under the same signature, another origin's key.
    let resized = note.replacen("20852163", "20852164", 1);
    assert!(Checkpoint::open(resized.as_bytes(), &signer.verifier()).is_err());
    let rerooted = note.replacen("BwcH", "CAcH", 1);
    assert!(Checkpoint::open(rerooted.as_bytes(), &signer.verifier()).is_err());
    let elsewhere = NoteSigner::generate("other.example/log").expect("key");
    let (foreign, _) = checkpoint.sign(&elsewhere);
    assert!(matches!(Checkpoint::open(foreign.as_bytes(), &elsewhere.verifier()), Err(NoteError::Checkpoint(_))), "the origin is the key's name");
    for bad in ["o\n01\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n", "o\n1\nBwcH\n", "o\n1\n", "\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"] {
        assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
    }
    let extended = Checkpoint::parse("o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\nextension line\n").expect("extension lines are ignored");
    assert_eq!(extended.size, 1);
}

/// The C2SP example's shape: extra, index, hashes, a blank line, the checkpoint verbatim;
/// malformed proofs are refused.
#[test]
fn tlog_proofs_format_and_parse() {
    let signer = NoteSigner::generate("example.com/fancylog").expect("key");
    let (checkpoint, _) = Checkpoint { origin: "example.com/fancylog".into(), size: 109482, root: [3; 32] }.sign(&signer);
    let proof = TlogProof { extra: Some(b"age-v1.2.1".to_vec()), index: 73894, proof: vec![[1; 32], [2; 32]], checkpoint: checkpoint.clone() };
    let text = proof.format();
    assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra YWdlLXYxLjIuMQ==\nindex 73894\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n"));
    assert!(text.ends_with(&format!("\n\n{checkpoint}")));
    assert_eq!(TlogProof::parse(&text), Ok(proof.clone()));
    let bare = TlogProof { extra: None, proof: vec![], ..proof };
    assert_eq!(TlogProof::parse(&bare.format()), Ok(bare));
    for bad in [
        text.replacen("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2", 1),
        text.replacen("index 73894", "index 073894", 1),
        text.replacen("index 73894", "idx 73894", 1),
        text.replacen("AQEBAQEB", "AQEB", 1),
        text.replacen("\n\n", "\n", 1),
    ] {
        assert!(TlogProof::parse(&bad).is_err(), "{bad}");
    }
}

/// A rotated checkpoint key (issue 28): a verifier set of the new key and the old one opens
/// checkpoints of both; each key alone opens only its own (the control); a set of two
/// names is refused, and the vkey lines round-trip, the current key first.
#[test]
fn a_rotated_key_set_opens_checkpoints_of_every_key_it_holds() {
    let old = NoteSigner::generate("example.com/log").expect("key");
    let new = NoteSigner::generate("example.com/log").expect("key");
    let checkpoint = |size| Checkpoint { origin: "example.com/log".into(), size, root: [7; 32] };
    let (by_old, _) = checkpoint(1).sign(&old);
    let (by_new, _) = checkpoint(2).sign(&new);
    let set = NoteVerifier::from_vkey(&format!("{}\n{}\n", new.verifier().vkey(), old.verifier().vkey())).expect("a set");
    assert_eq!(set.vkey(), new.verifier().vkey(), "the first line is the current key");
    assert_eq!(set.vkeys(), vec![new.verifier().vkey(), old.verifier().vkey()]);
    assert_eq!(new.verifier().with_older(&old.verifier()).expect("same name"), set);
    assert_eq!(Checkpoint::open(by_old.as_bytes(), &set).expect("old").size, 1);
    assert_eq!(Checkpoint::open(by_new.as_bytes(), &set).expect("new").size, 2);
    assert!(Checkpoint::open(by_old.as_bytes(), &new.verifier()).is_err(), "the new key alone does not open the old checkpoint");
    assert!(Checkpoint::open(by_new.as_bytes(), &old.verifier()).is_err(), "the old key alone does not open the new checkpoint");
    let other = NoteSigner::generate("other.example/log").expect("key");
    assert!(new.verifier().with_older(&other.verifier()).is_err(), "one log, one name");
}
