"""The SDK against a real server: ARTIFACTSTORE_URL and ARTIFACTSTORE_TOKEN (read, write and
admin on its tenant) name it; scripts/e2e/run starts one and runs these."""

from __future__ import annotations

import hashlib
import os
import uuid

import blake3
import cbor2
import httpx
import pytest

from artifactstore import Client, DigestMismatch, errors

URL = os.environ["ARTIFACTSTORE_URL"]
TOKEN = os.environ["ARTIFACTSTORE_TOKEN"]


@pytest.fixture
def store():
    with Client(URL, TOKEN) as client:
        yield client


@pytest.fixture
def package(store):
    return store.create_package("sdk-python", f"test-{uuid.uuid4()}", metadata={"suite": "sdk", "git.sha": "abc123"})


def data_of(size: int, seed: int) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def test_the_whole_flow(store, package, tmp_path):
    raw = data_of(10_000, 1)
    put = store.put_file(package.id, "raw/one.bin", raw, expected_digest="sha256:" + hashlib.sha256(raw).hexdigest())
    assert put.size == len(raw) and put.digests.sha256 == hashlib.sha256(raw).hexdigest()

    form_source = tmp_path / "two.txt"
    form_source.write_bytes(b"sent as a form\n")
    form = store.post_file(package.id, "form/two.txt", form_source, media_type="text/plain")
    assert form.media_type == "text/plain"

    big = data_of(3 * 1024 * 1024 + 17, 2)
    big_source = tmp_path / "three.bin"
    big_source.write_bytes(big)
    session = store.upload_file(package.id, "session/three.bin", big_source, chunk_size=1024 * 1024)
    assert session.digests.blake3 == blake3.blake3(big).hexdigest()

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub" / "b.txt").write_bytes(b"bb")
    uploaded = store.upload_directory(package.id, tree, prefix="tree/")
    assert [f.relative_path for f in uploaded] == ["tree/a.txt", "tree/sub/b.txt"]

    slsa = {
        "buildDefinition": {"buildType": "https://ci.example.com/v1", "externalParameters": {"ref": "main"}},
        "runDetails": {"builder": {"id": "https://ci.example.com/runner"}},
    }
    final = store.finalize(package.id, provenance=slsa, provenance_type="https://slsa.dev/provenance/v1")
    assert final.status.value == "finalized" and final.file_count == 5
    supplied = store.manifest_json(package.id)["provenance"]["supplied"]
    assert supplied == {"predicate_type": "https://slsa.dev/provenance/v1", "predicate": slsa}

    manifest = store.manifest(package.id)
    assert sorted(f["relative_path"] for f in manifest["files"]) == sorted(
        ["raw/one.bin", "form/two.txt", "session/three.bin", "tree/a.txt", "tree/sub/b.txt"]
    )
    assert cbor2.loads(cbor2.dumps(manifest, canonical=True)) == manifest
    as_json = store.manifest_json(package.id)
    assert [f["relative_path"] for f in as_json["files"]] == [f["relative_path"] for f in manifest["files"]]

    by_path = {f.relative_path: f for f in store.get_package(package.id).files}
    target = tmp_path / "down" / "three.bin"
    target.parent.mkdir()
    info = store.download(
        by_path["session/three.bin"].id, target, expected_digest="blake3:" + blake3.blake3(big).hexdigest()
    )
    assert target.read_bytes() == big and info.size == len(big)
    assert store.read_range(by_path["session/three.bin"].id, 1000, 1999) == big[1000:2000]

    found = list(store.list_packages(meta={"suite": "sdk", "git.sha": "abc123"}, producer="sdk-python"))
    assert package.id in [p.id for p in found]
    assert list(store.list_packages(meta={"suite": "sdk", "git.sha": "other"})) == []


def test_an_interrupted_session_resumes_where_the_server_says(store, package, tmp_path):
    data = data_of(2 * 1024 * 1024 + 5, 3)
    source = tmp_path / "resumed.bin"
    source.write_bytes(data)
    upload = store.start_upload(
        package.id, "resumed.bin", size=len(data), expected_digest="blake3:" + blake3.blake3(data).hexdigest()
    )
    # A first client sent 700,000 bytes, then went away.
    with httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        first = http.patch(
            upload.upload_url,
            content=data[:700_000],
            headers={"Content-Range": f"bytes 0-699999/{len(data)}", "Content-Type": "application/octet-stream"},
        )
        assert first.status_code == 202
    assert store.get_upload(upload.id).offset == 700_000
    done = store.upload_file(package.id, "resumed.bin", source, session=upload.id, chunk_size=512 * 1024)
    assert done.size == len(data) and done.digests.blake3 == blake3.blake3(data).hexdigest()


def test_a_chunk_from_a_stale_offset_is_corrected_from_the_problem(store, package, tmp_path):
    data = data_of(300_000, 4)
    source = tmp_path / "stale.bin"
    source.write_bytes(data)
    upload = store.start_upload(package.id, "stale.bin", size=len(data))
    with httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        http.patch(upload.upload_url, content=data[:100_000], headers={"Content-Range": f"bytes 0-99999/{len(data)}"})
    # The session object says offset 0; the server holds 100,000: the 416's offset wins.
    with pytest.raises(errors.RangeNotSatisfiable) as refused:
        store._request(
            "PATCH", upload.upload_url, content=data[:1000], headers={"Content-Range": f"bytes 0-999/{len(data)}"}
        )
    assert refused.value.offset == 100_000
    done = store.upload_file(package.id, "stale.bin", source, session=upload.id)
    assert done.digests.sha256 == hashlib.sha256(data).hexdigest()


def test_ids_are_uuids_before_they_reach_a_url(store):
    for smuggled in ["../../usage", "x?y", "01a24fa5-b469-76a7-a397-af361809f699/../.."]:
        with pytest.raises(ValueError):
            store.get_package(smuggled)
        with pytest.raises(ValueError):
            store.get_file(smuggled)


def test_a_download_is_made_as_open_would_make_it(store, package, tmp_path):
    info = store.put_file(package.id, "mode.bin", b"mode")
    target = tmp_path / "mode.bin"
    store.download(info.id, target)
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_download_that_is_not_what_was_asked_for_writes_nothing(store, package, tmp_path):
    info = store.put_file(package.id, "x.bin", b"the bytes")
    target = tmp_path / "x.bin"
    with pytest.raises(DigestMismatch):
        store.download(info.id, target, expected_digest="sha256:" + "0" * 64)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_the_event_log_is_an_iterator(store, package):
    store.put_file(package.id, "e.txt", b"event")
    store.finalize(package.id)
    mine = [e for e in store.events(0, follow=False) if e["subject_id"] == str(package.id)]
    assert [e["type"] for e in mine] == ["v1.package.created", "v1.file.ingested", "v1.package.finalized"]
    sequences = [e["sequence"] for e in store.events(0, follow=False)]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    only = list(store.events(0, types="v1.package.finalized", follow=False))
    assert only and all(e["type"] == "v1.package.finalized" for e in only)
    # Following: a commit made after the wait began wakes it.
    tail = store.events(sequences[-1], follow=True, wait=10)
    other = store.create_package("sdk-python", "woken")
    assert next(tail)["subject_id"] == str(other.id)


def test_retention_holds_and_classes(store, package):
    held = store.set_legal_hold(package.id, "litigation 42")
    assert held.retention.legal_hold
    assert not store.release_legal_hold(package.id).retention.legal_hold
    changed = store.change_retention(package.id, "long")
    assert changed.retention_class == "long"


def test_files_and_packages_are_removed(store):
    package = store.create_package("sdk-python", "removal")
    store.put_file(package.id, "a/gone.txt", b"gone")
    store.delete_file(package.id, "a/gone.txt")
    with pytest.raises(errors.NotFound):
        store.delete_file(package.id, "a/gone.txt")
    assert store.get_package(package.id).file_count == 0
    abandoned = store.delete_package(package.id, reason="not needed")
    assert abandoned.status.value == "abandoned" and abandoned.removal.reason == "not needed"
    with pytest.raises(errors.Gone):
        store.get_package(package.id)


def test_refusals_are_typed_exceptions(store, package):
    with pytest.raises(errors.NotFound) as missing:
        store.get_package(uuid.uuid4())
    assert missing.value.status == 404 and missing.value.request_id
    with pytest.raises(errors.InvalidInput):
        store.put_file(package.id, "a/../b", b"x")
    with pytest.raises(errors.InvalidInput):
        store.put_file(package.id, "wrong.bin", b"x", expected_digest="sha256:" + "0" * 64)
    first = store.put_file(package.id, "notes.txt", b"first")
    second = store.put_file(package.id, "notes.txt", b"second", if_match=f'"{first.content_address}"')
    with pytest.raises(errors.PreconditionFailed):  # the tag of a file no longer there
        store.put_file(package.id, "notes.txt", b"third", if_match=f'"{first.content_address}"')
    assert store.read_range(second.id, 0, 5) == b"second"
    store.finalize(package.id)
    with pytest.raises(errors.Conflict):
        store.put_file(package.id, "late.bin", b"x")
    with pytest.raises(errors.InvalidInput):
        list(store.list_packages(meta={"": "no key"}))
    with Client(URL, "not-a-token") as stranger, pytest.raises(errors.Unauthorized):
        stranger.get_package(package.id)
