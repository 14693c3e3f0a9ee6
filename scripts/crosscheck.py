#!/usr/bin/env python3
"""Cross-checks artifactstore's encodings with independent implementations.

Usage: crosscheck.py DIR
DIR holds, per case NAME: NAME.cbor (manifest, canonical CBOR), NAME.json (our JCS
projection), and optionally files.json: [{"path": ..., "blake3": hex, "sha256": hex}] naming
files (relative to DIR/files) whose digests we computed.

Checks:
- cbor2 decodes our bytes, and re-encoding with canonical=True gives the same bytes;
- rfc8785 canonicalises our JSON projection to the same bytes, and the projection is the
  same data as the CBOR;
- the manifest digest (blake3 over the CBOR) matches digest.txt if present;
- hashlib.sha256 and the blake3 package agree with our digests.
Exits non-zero on the first disagreement.
"""
import hashlib
import json
import pathlib
import sys

import blake3
import cbor2
import rfc8785


def main(root: pathlib.Path) -> int:
    cases = sorted(root.glob("*.cbor"))
    if not cases:
        print(f"no *.cbor cases in {root}", file=sys.stderr)
        return 2
    for cbor_path in cases:
        ours = cbor_path.read_bytes()
        decoded = cbor2.loads(ours)
        again = cbor2.dumps(decoded, canonical=True)
        if again != ours:
            print(f"{cbor_path.name}: cbor2 canonical re-encoding differs", file=sys.stderr)
            return 1
        jcs_ours = cbor_path.with_suffix(".json").read_bytes()
        if rfc8785.dumps(json.loads(jcs_ours)) != jcs_ours:
            print(f"{cbor_path.name}: rfc8785 canonicalisation of our JSON differs", file=sys.stderr)
            return 1
        if rfc8785.dumps(decoded) != jcs_ours:
            print(f"{cbor_path.name}: JSON projection is not the CBOR's data", file=sys.stderr)
            return 1
        digest_file = cbor_path.with_suffix(".digest")
        if digest_file.exists():
            want = digest_file.read_text().strip()
            got = "blake3:" + blake3.blake3(ours).hexdigest()
            if want != got:
                print(f"{cbor_path.name}: manifest digest {want} != {got}", file=sys.stderr)
                return 1
    files = root / "files.json"
    checked = 0
    if files.exists():
        for entry in json.loads(files.read_text()):
            data = (root / "files" / entry["path"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                print(f"{entry['path']}: sha256 differs", file=sys.stderr)
                return 1
            if blake3.blake3(data).hexdigest() != entry["blake3"]:
                print(f"{entry['path']}: blake3 differs", file=sys.stderr)
                return 1
            checked += 1
    print(f"crosscheck ok: {len(cases)} manifests, {checked} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1])))
