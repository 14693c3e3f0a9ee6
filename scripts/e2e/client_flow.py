#!/usr/bin/env python3
"""End to end through a Python client generated from openapi/artifactstore.json.

Usage: client_flow.py CLIENT_PARENT_DIR BASE_URL TOKEN
Creates a package, uploads files (raw PUT, multipart, upload session), finalizes, reads both
manifest forms and downloads every file, checking digests with hashlib and blake3.
"""
import hashlib
import io
import json
import sys

sys.path.insert(0, sys.argv[1])
base, token = sys.argv[2], sys.argv[3]

import blake3  # noqa: E402
import cbor2  # noqa: E402
import httpx  # noqa: E402
from artifactstore_client import AuthenticatedClient  # noqa: E402
from artifactstore_client.api.blobs import missing_blobs  # noqa: E402
from artifactstore_client.api.files import download_file, get_file  # noqa: E402
from artifactstore_client.api.packages import (  # noqa: E402
    create_package,
    finalize_package,
    get_manifest,
    get_manifest_json,
    get_package,
    list_packages,
    put_file,
    upload_file,
)
from artifactstore_client.api.uploads import append_upload, complete_upload, create_upload  # noqa: E402
from artifactstore_client.models import (  # noqa: E402
    CreatePackage,
    CreatePackageMetadata,
    CreateUpload,
    MissingBlobsRequest,
    Package,
    Problem,
    UploadFileBody,
)
from artifactstore_client.types import File  # noqa: E402


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)
meta = CreatePackageMetadata.from_dict({"origin": "python-client"})
created = create_package.sync(client=client, body=CreatePackage(producer="py", subject="e2e", metadata=meta))
check(isinstance(created, Package), f"create_package returned {created!r}")
pid = created.id

payloads = {
    "raw/one.txt": b"hello from the generated client\n",
    "form/two.bin": bytes(range(256)) * 100,
    "session/three.bin": bytes((i * 7) % 256 for i in range(300_000)),
}
raw = put_file.sync(pid, "raw/one.txt", client=client, body=File(payload=io.BytesIO(payloads["raw/one.txt"]), mime_type="text/plain"),
                    expected_digest="sha256:" + hashlib.sha256(payloads["raw/one.txt"]).hexdigest())
check(not isinstance(raw, Problem) and raw.relative_path == "raw/one.txt", f"put_file: {raw!r}")
form = upload_file.sync(pid, client=client, body=UploadFileBody(file=File(payload=io.BytesIO(payloads["form/two.bin"]), file_name="two.bin"), relative_path="form/two.bin"))
check(not isinstance(form, Problem) and form.size == len(payloads["form/two.bin"]), f"upload_file: {form!r}")

data = payloads["session/three.bin"]
session = create_upload.sync(client=client, body=CreateUpload(package_id=pid, relative_path="session/three.bin", size=len(data),
                                                               expected_digest="blake3:" + blake3.blake3(data).hexdigest()))
check(not isinstance(session, Problem), f"create_upload: {session!r}")
# The generated client has no typed Content-Range parameter (it is a header); send chunks with httpx.
with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
    step = 100_000
    for start in range(0, len(data), step):
        end = min(start + step, len(data)) - 1
        r = http.patch(session.upload_url, content=data[start:end + 1],
                       headers={"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        check(r.status_code == 202, f"PATCH {start}: {r.status_code} {r.text}")
done = complete_upload.sync(session.id, client=client)
check(not isinstance(done, Problem) and done.size == len(data), f"complete_upload: {done!r}")

missing = missing_blobs.sync(client=client, body=MissingBlobsRequest(content_addresses=[
    "blake3:" + blake3.blake3(data).hexdigest(), "blake3:" + "0" * 64]))
check(missing.missing == ["blake3:" + "0" * 64], f"missing_blobs: {missing!r}")

final = finalize_package.sync(pid, client=client)
check(final.status.value == "finalized" and final.manifest_digest, f"finalize: {final!r}")

# openapi-python-client does not decode application/cbor: take the raw bytes.
raw_client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=False)
cbor_resp = get_manifest.sync_detailed(pid, client=raw_client)
check(cbor_resp.status_code == 200 and cbor_resp.headers["content-type"] == "application/cbor", "manifest response")
cbor = cbor_resp.content
check("blake3:" + blake3.blake3(cbor).hexdigest() == final.manifest_digest, "manifest digest")
check(cbor2.dumps(cbor2.loads(cbor), canonical=True) == cbor, "manifest is canonical CBOR")
json_resp = get_manifest_json.sync_detailed(pid, client=client)
manifest = json.loads(json_resp.content)
check(sorted(f["relative_path"] for f in manifest["files"]) == sorted(payloads), "manifest lists the files")

package = get_package.sync(pid, client=client)
for f in package.files:
    meta = get_file.sync(f.id, client=client)
    body = download_file.sync_detailed(f.id, client=client).content
    check(body == payloads[f.relative_path], f"bytes of {f.relative_path}")
    check(hashlib.sha256(body).hexdigest() == meta.digests.sha256, f"sha256 of {f.relative_path}")
    check(blake3.blake3(body).hexdigest() == meta.digests.blake3, f"blake3 of {f.relative_path}")
# A range and a conditional request through the generated client's typed header parameters.
three = next(f for f in package.files if f.relative_path == "session/three.bin")
part = download_file.sync_detailed(three.id, client=raw_client, range_="bytes=1000-1999")
check(part.status_code == 206 and part.content == data[1000:2000], f"range: {part.status_code}")
check(part.headers["content-range"] == f"bytes 1000-1999/{len(data)}", "content-range")
etag = part.headers["etag"]
same = download_file.sync_detailed(three.id, client=raw_client, if_none_match=etag)
check(same.status_code == 304 and same.content == b"", f"if-none-match: {same.status_code}")
same = get_manifest_json.sync_detailed(pid, client=raw_client, if_none_match=json_resp.headers["etag"])
check(same.status_code == 304, f"manifest if-none-match: {same.status_code}")
# The metadata filter as the spec declares it (`meta=<key>=<value>`, repeated).
found = list_packages.sync(client=client, meta=["origin=python-client"])
check([p.id for p in found.items] == [pid], f"meta filter: {found!r}")
none = list_packages.sync(client=client, meta=["origin=python-client", "other=x"])
check(none.items == [], f"meta filters combine: {none!r}")
twice = list_packages.sync(client=client, meta=["origin=python-client", "origin=elsewhere"])
check(isinstance(twice, Problem) and twice.status == 422, f"one key, two values: {twice!r}")
# The event stream in both forms, decoded with independent libraries (cbor2, json).
with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
    as_cbor = http.get("/events", params={"since": 0, "limit": 1000, "wait": 0})
    check(as_cbor.headers["content-type"] == "application/cbor", "events default to CBOR")
    page = cbor2.loads(as_cbor.content)
    check(cbor2.dumps(page, canonical=True) == as_cbor.content, "event page is canonical CBOR")
    as_json = http.get("/events", params={"since": 0, "limit": 1000, "wait": 0}, headers={"Accept": "application/json"}).json()
    check(page["next_since"] == as_json["next_since"] == int(as_cbor.headers["next-since"]), "next_since agrees")
    check([e["sequence"] for e in page["events"]] == [e["sequence"] for e in as_json["events"]], "same events")
    check(all(a["payload"] == b["payload"] for a, b in zip(page["events"], as_json["events"])), "payloads agree")
    types = [e["type"] for e in as_json["events"] if e["subject_id"] == str(pid)]
    check(types[0] == "v1.package.created" and types[-1] == "v1.package.finalized", f"package events {types}")
print(f"python client e2e ok: package {pid}, {len(package.files)} files verified, events in CBOR and JSON agree")
