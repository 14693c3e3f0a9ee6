"""Checks what the server signs with third-party tools only (none of our code):

- a finalized package's attestation: the DSSE envelope verified by securesystemslib with the
  key from GET /keys (cryptography loads the PEM), the statement's bytes canonical per
  rfc8785, its manifest digest recomputed with blake3 over the manifest's CBOR, its subjects
  equal to the manifest's files as cbor2 decodes them, and every file's bytes hashed
  (hashlib's SHA-256 and blake3) against its subject; the producer's SLSA provenance, attached
  at finalize, in both the manifest (cbor2) and the signed statement, as sent;
- a log checkpoint: the Ed25519 signature over its documented four lines, by cryptography.

Usage: verify_attestation.py BASE_URL TOKEN
"""

import base64
import hashlib
import json
import sys

import blake3
import cbor2
import httpx
import rfc8785
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def check(cond, what):
    if not cond:
        sys.exit(f"attestation check failed: {what}")


base, token = sys.argv[1], sys.argv[2]
http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def ok(resp, status=200):
    check(resp.status_code == status, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}")
    return resp


files = {"dist/app.bin": b"\x00\x01app" * 1000, "notes/README.md": "# notes \u00e9\n".encode()}
pid = ok(http.post("/packages", json={"producer": "e2e", "subject": "attested"}), 201).json()["id"]
for path, data in files.items():
    ok(http.put(f"/packages/{pid}/files/{path}", content=data), 201)
slsa = {
    "buildDefinition": {
        "buildType": "https://ci.example.com/build/v1",
        "externalParameters": {"ref": "refs/tags/v1.0", "attempt": 2},
    },
    "runDetails": {"builder": {"id": "https://ci.example.com/runner"}},
}
supplied = {"predicate_type": "https://slsa.dev/provenance/v1", "predicate": slsa}
ok(http.post(f"/packages/{pid}/finalize", json={"provenance": supplied}))

envelope_resp = ok(http.get(f"/packages/{pid}/attestation"))
check(envelope_resp.headers["content-type"] == "application/vnd.dsse.envelope.v1+json", "media type")
envelope = Envelope.from_dict(envelope_resp.json())
keys = ok(httpx.get(f"{base}/keys")).json()["keys"]
verifiers = [
    SSlibKey.from_crypto(load_pem_public_key(k["public_key_pem"].encode()), keyid=k["key_id"], scheme="ed25519")
    for k in keys
]
verified = envelope.verify(verifiers, 1)  # raises VerificationError when no signature verifies
check(len(verified) == 1, f"verified by {list(verified)}")
check(envelope.payload_type == "application/vnd.in-toto+json", envelope.payload_type)

statement = json.loads(envelope.payload)
check(rfc8785.dumps(statement) == envelope.payload, "the statement's bytes are its JCS form")
check(statement["_type"] == "https://in-toto.io/Statement/v1", statement["_type"])
check(statement["predicateType"] == "https://artifactstore.dev/attestation/package/v1", "predicate type")
manifest_bytes = ok(http.get(f"/packages/{pid}/manifest")).content
predicate = statement["predicate"]
check(predicate["manifest"]["digest"] == "blake3:" + blake3.blake3(manifest_bytes).hexdigest(), "manifest digest")
check(predicate["package"]["id"] == pid, "package id")
manifest = cbor2.loads(manifest_bytes)
check(manifest["provenance"]["supplied"] == supplied, "the manifest carries the producer's provenance")
check(predicate["provenance"]["supplied"] == supplied, "the signed statement carries it")
subjects = {s["name"]: s["digest"] for s in statement["subject"]}
check(
    subjects == {f["relative_path"]: dict(f["digests"]) for f in manifest["files"]},
    f"subjects {subjects} are the manifest's files",
)
for path, data in files.items():
    served = ok(http.get(f"/packages/{pid}/files/{path}")).content
    check(served == data, f"{path} bytes")
    check(subjects[path]["sha256"] == hashlib.sha256(served).hexdigest(), f"{path} sha256")
    check(subjects[path]["blake3"] == blake3.blake3(served).hexdigest(), f"{path} blake3")

# A checkpoint of the log, its signature over the documented text.
checkpoint = ok(http.post("/log/checkpoints"), 201).json()
signed = (
    f"artifactstore log checkpoint v1\nsequence {checkpoint['sequence']}\n"
    f"chain {checkpoint['chain']}\ntime {checkpoint['time']}\n"
).encode()
key = next(k for k in keys if k["key_id"] == checkpoint["key_id"])
check(hashlib.sha256(base64.b64decode("".join(key["public_key_pem"].splitlines()[1:-1]))[-32:]).hexdigest() == key["key_id"], "key id")
load_pem_public_key(key["public_key_pem"].encode()).verify(bytes.fromhex(checkpoint["signature"]), signed)
print(f"attestation of {pid} and checkpoint {checkpoint['sequence']} verified with third-party tools")
