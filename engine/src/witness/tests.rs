use super::*;
use crate::note::NoteSigner;
use crate::tlog::Tree;

struct Log {
    signer: NoteSigner,
    tree: Tree,
}

impl Log {
    fn new(leaves: u64, salt: u8) -> Self {
        let signer = NoteSigner::new("example.test/log", crate::crypto::Ed25519Private::from_seed(&[3; 32])).expect("key");
        Self { signer, tree: Tree::from_leaf_hashes((0..leaves).map(|i| tlog::leaf_hash(&[salt, i as u8]))) }
    }

    fn note(&self, size: u64) -> String {
        Checkpoint { origin: self.signer.name().into(), size, root: self.tree.root(size).expect("root") }.sign(&self.signer).0
    }

    fn request(&self, old: u64, size: u64) -> AddCheckpoint {
        let proof = if old == 0 { vec![] } else { self.tree.consistency_proof(old, size).expect("proof") };
        parse_request(request_body(old, &proof, &self.note(size)).as_bytes()).expect("parses")
    }

    fn logs(&self) -> BTreeMap<String, NoteVerifier> {
        BTreeMap::from([(self.signer.name().to_string(), self.signer.verifier())])
    }
}

fn recorded(log: &Log, size: u64) -> Option<Recorded> {
    Some(Recorded { size, root: log.tree.root(size).expect("root") })
}

/// The spec's answers, each in turn: a first checkpoint from 0, a consistent extension,
/// the same checkpoint again; 409 for a stale old size and for a fork at the recorded
/// size; 422 for a bad proof; 404, 403 and 400.
#[test]
fn the_witness_answers_as_the_spec_says() {
    let log = Log::new(20, 0);
    let logs = log.logs();
    assert_eq!(decide(&log.request(0, 10), &logs, None).expect("first").size, 10);
    assert_eq!(decide(&log.request(10, 20), &logs, recorded(&log, 10)).expect("extends").size, 20);
    assert_eq!(decide(&log.request(20, 20), &logs, recorded(&log, 20)).expect("the same again").size, 20);
    let stale = decide(&log.request(10, 20), &logs, recorded(&log, 15)).expect_err("stale");
    assert_eq!((stale.status(), stale.recorded_size()), (409, Some(15)));
    assert_eq!(decide(&log.request(0, 10), &logs, recorded(&log, 15)).expect_err("behind").status(), 409);

    // A fork: the same key signs another tree of the same size.
    let fork = Log::new(20, 1);
    let refused = decide(&fork.request(20, 20), &logs, recorded(&log, 20)).expect_err("fork");
    assert_eq!((refused.status(), refused.recorded_size()), (409, Some(20)));
    assert_eq!(refused, Refusal::Fork { size: 20 });
    assert_eq!(decide(&fork.request(10, 20), &logs, recorded(&log, 10)).expect_err("no proof from the other tree"), Refusal::BadProof);

    let mut bad_proof = log.request(10, 20);
    bad_proof.proof[0][0] ^= 1;
    assert_eq!(decide(&bad_proof, &logs, recorded(&log, 10)).expect_err("bad proof").status(), 422);
    assert_eq!(decide(&log.request(0, 10), &BTreeMap::new(), None).expect_err("unknown").status(), 404);
    let other_key = BTreeMap::from([(log.signer.name().to_string(), NoteSigner::generate(log.signer.name()).expect("key").verifier())]);
    assert_eq!(decide(&log.request(0, 10), &other_key, None).expect_err("forbidden").status(), 403);
    let mut above = log.request(0, 10);
    above.old_size = 11;
    assert_eq!(decide(&above, &logs, None).expect_err("above").status(), 400);
}

#[test]
fn malformed_requests_are_400() {
    let log = Log::new(4, 0);
    let note = log.note(4);
    for body in [
        format!("old 01\n\n{note}"),
        format!("old 1\nnot-base64\n\n{note}"),
        format!("1\n\n{note}"),
        "old 1\n".to_string(),
        format!("old 0\n\n{}", &note[..20]),
    ] {
        assert_eq!(parse_request(body.as_bytes()).map(|_| ()).map_err(|e| e.status()), Err(400), "{body:?}");
    }
    let long: Vec<Hash> = vec![[0; 32]; PROOF_LINES_MAX + 1];
    assert_eq!(parse_request(request_body(1, &long, &note).as_bytes()).map_err(|e| e.status()).err(), Some(400));
    assert!(parse_request(request_body(3, &[[0; 32]; 2], &note).as_bytes()).is_ok());
}
