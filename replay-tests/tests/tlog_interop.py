"""Independent verdicts on Vouchsafe's C2SP artefacts, from PyPI's aics-tlog (an
implementation this project did not write): checkpoint signatures (signed-note, Ed25519),
witness cosignatures (cosignature/v1, with a quorum),
tiles (tlog-tiles: every tile and bundle authenticated against the checkpoint's root),
inclusion proofs (from a .tlog-proof, the leaf read from the entry bundles) and consistency
proofs (RFC 9162), each also recomputed from the tiles by aics-tlog and compared.

Reads a JSON file of cases (argv[1]); prints one JSON object on the last line of stdout:
{"version": ..., "results": {name: {"ok": bool, "error": str|null, ...}}}. It decides
nothing about which case should pass: the Rust test (tlog_interop.rs) does.
"""

import base64
import json
import sys
import traceback

import aics_tlog
from aics_tlog import (
    FileSystemTileReader,
    audit_tiles,
    consistency_proof_from_tiles,
    inclusion_proof_from_tiles,
    parse_note,
    parse_vkey,
    read_entry,
    tree_root_from_tiles,
    verify_checkpoint,
    verify_consistency,
    verify_leaf_inclusion,
)

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"


def checkpoint(note_text, vkey):
    """(size, root) of a checkpoint note verified with the log's vkey, or raises."""
    result = verify_checkpoint(parse_note(note_text), vkey)
    if not result.ok:
        raise ValueError(f"checkpoint does not verify: {result.error}")
    return result.size, result.root


def parse_tlog_proof(text):
    """c2sp.org/tlog-proof@v1: header, optional extra, index, hashes, blank line, note."""
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise ValueError("no blank line before the checkpoint")
    lines = head.split("\n")
    if lines[0] != TLOG_PROOF_HEADER:
        raise ValueError("not a tlog-proof")
    lines = lines[1:]
    if lines and lines[0].startswith("extra "):
        lines = lines[1:]
    if not lines or not lines[0].startswith("index "):
        raise ValueError("no index line")
    index = int(lines[0][len("index "):])
    proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    return index, proof, note


def run(case, vkey):
    kind = case["kind"]
    if kind == "checkpoint":
        size, root = checkpoint(case["note"], vkey)
        return {"ok": True, "size": size}
    if kind == "cosigned":
        witnesses = [parse_vkey(line) for line in case["witnesses"]]
        result = verify_checkpoint(parse_note(case["note"]), vkey, witnesses, case["quorum"])
        return {"ok": result.ok, "error": result.error, "cosignatures": result.cosignature_count}
    if kind == "tiles":
        size, root = checkpoint(case["note"], vkey)
        reader = FileSystemTileReader(case["dir"])
        report = audit_tiles(reader, size, root)
        if tree_root_from_tiles(reader, size) != root:
            return {"ok": False, "error": "the root from the tiles is not the checkpoint's"}
        return {"ok": True, "tiles": report.tiles, "bundles": report.bundles}
    if kind == "inclusion":
        index, proof, note = parse_tlog_proof(case["tlog_proof"])
        size, root = checkpoint(note, vkey)
        reader = FileSystemTileReader(case["tiles_dir"])
        leaf = read_entry(reader, index, size)
        ok = verify_leaf_inclusion(leaf, index, size, proof, root)
        from_tiles = inclusion_proof_from_tiles(reader, index, size)
        return {"ok": ok, "same_as_tiles": from_tiles == proof, "leaf_bytes": len(leaf)}
    if kind == "consistency":
        old_size, old_root = checkpoint(case["old"], vkey)
        new_size, new_root = checkpoint(case["new"], vkey)
        proof = [base64.b64decode(line, validate=True) for line in case["proof"]]
        ok = verify_consistency(old_size, new_size, old_root, new_root, proof)
        from_tiles = consistency_proof_from_tiles(FileSystemTileReader(case["tiles_dir"]), old_size, new_size)
        return {"ok": ok, "same_as_tiles": from_tiles == proof}
    raise ValueError(f"unknown case kind {kind!r}")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    vkey = parse_vkey(spec["vkey"])
    results = {}
    for case in spec["cases"]:
        try:
            result = run(case, vkey)
            result.setdefault("error", None)
        except Exception as error:  # a refusal is a verdict, with its reason
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        results[case["name"]] = result
    print(json.dumps({"version": aics_tlog.__version__, "results": results}))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(2)
