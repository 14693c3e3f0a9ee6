"""The client: the generated API client (`client.api`, every operation typed) with the helpers
that streaming needs: files uploaded from disk by session with resume, downloads to a path with
their digests verified, the event log as an iterator, problems as exceptions."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import blake3
import cbor2
import httpx

from ._generated import AuthenticatedClient
from ._generated.models import FileInfo, Package, Upload
from .errors import ArtifactStoreError, NotFound, RangeNotSatisfiable, raise_for_problem

MiB = 1024 * 1024


class DigestMismatch(Exception):
    """Downloaded bytes whose digest is not the one the server (or the caller) named; nothing
    was written to the destination."""


def _id(value: str | uuid.UUID) -> str:
    """An id as a canonical UUID: anything else (a `../` smuggled in an id) never reaches a URL."""
    return str(uuid.UUID(str(value)))


def _file_path(relative_path: str) -> str:
    """The path's segments percent-encoded; `.` and `..` too, which HTTP clients would
    otherwise resolve away before sending (the server refuses them, as it should)."""
    segments = (quote(segment, safe="") for segment in relative_path.split("/"))
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)


class Client:
    """A connection to one artifact-store server with one token.

    >>> with Client("http://127.0.0.1:8000", token) as store:
    ...     package = store.create_package("ci", "commit-abc", metadata={"git.sha": "abc"})
    ...     store.upload_file(package.id, "dist/app.tar.gz", "dist/app.tar.gz")
    ...     store.finalize(package.id)
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0, verify_tls: bool = True):
        self.api = AuthenticatedClient(
            base_url=base_url.rstrip("/"),
            token=token,
            timeout=httpx.Timeout(timeout),
            verify_ssl=verify_tls,
            raise_on_unexpected_status=False,
        )
        self._http = self.api.get_httpx_client()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, url, **kwargs)
        raise_for_problem(response)
        return response

    # Packages

    def create_package(
        self,
        producer: str,
        subject: str,
        *,
        retention_class: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Package:
        body: dict[str, Any] = {"producer": producer, "subject": subject, "metadata": dict(metadata or {})}
        if retention_class is not None:
            body["retention_class"] = retention_class
        return Package.from_dict(self._request("POST", "/packages", json=body).json())

    def get_package(self, package_id: str | uuid.UUID) -> Package:
        return Package.from_dict(self._request("GET", f"/packages/{_id(package_id)}").json())

    def list_packages(
        self,
        *,
        producer: str | None = None,
        subject: str | None = None,
        retention_class: str | None = None,
        status: str | None = None,
        meta: Mapping[str, str] | None = None,
        page_size: int = 100,
    ) -> Iterator[Package]:
        """Every package that matches, newest first, page after page."""
        params: list[tuple[str, str]] = [("limit", str(page_size))]
        for name, value in (
            ("producer", producer),
            ("subject", subject),
            ("retention_class", retention_class),
            ("status", status),
        ):
            if value is not None:
                params.append((name, value))
        params += [("meta", f"{key}={value}") for key, value in (meta or {}).items()]
        cursor = None
        while True:
            page = self._request("GET", "/packages", params=params + ([("cursor", cursor)] if cursor else [])).json()
            for item in page["items"]:
                yield Package.from_dict(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def finalize(
        self,
        package_id: str | uuid.UUID,
        provenance: Mapping[str, Any] | None = None,
        provenance_type: str | None = None,
    ) -> Package:
        """Makes the package immutable, with its manifest. `provenance` (a JSON object: an SLSA
        provenance predicate, or any JSON whose numbers are integers) is recorded as given in
        the manifest's `provenance.supplied` and in the signed attestation; `provenance_type`
        is the URI naming its format (e.g. `https://slsa.dev/provenance/v1`)."""
        body = None
        if provenance is not None:
            supplied: dict[str, Any] = {"predicate": dict(provenance)}
            if provenance_type is not None:
                supplied["predicate_type"] = provenance_type
            body = {"provenance": supplied}
        elif provenance_type is not None:
            raise ValueError("provenance_type names the format of a provenance: give provenance too")
        return Package.from_dict(self._request("POST", f"/packages/{_id(package_id)}/finalize", json=body).json())

    def delete_package(self, package_id: str | uuid.UUID, reason: str | None = None) -> Package:
        """Abandons an open package, or withdraws a finalized one (an admin token's): its
        files go, its record stays (`status`, `removal`)."""
        body = {"reason": reason} if reason is not None else None
        return Package.from_dict(self._request("DELETE", f"/packages/{_id(package_id)}", json=body).json())

    def delete_file(self, package_id: str | uuid.UUID, relative_path: str) -> None:
        """Removes the file at a path of an open package."""
        self._request("DELETE", f"/packages/{_id(package_id)}/files/{_file_path(relative_path)}")

    def manifest(self, package_id: str | uuid.UUID) -> dict[str, Any]:
        """The manifest, decoded from its canonical CBOR, whose BLAKE3 is checked against the
        digest the server names (`ETag`)."""
        response = self._request("GET", f"/packages/{_id(package_id)}/manifest")
        digest = response.headers["etag"].strip('"')
        actual = "blake3:" + blake3.blake3(response.content).hexdigest()
        if actual != digest:
            raise DigestMismatch(f"manifest of {_id(package_id)}: {actual}, the server names {digest}")
        return cbor2.loads(response.content)

    def manifest_json(self, package_id: str | uuid.UUID) -> dict[str, Any]:
        """The manifest's canonical JSON projection (RFC 8785)."""
        return self._request("GET", f"/packages/{_id(package_id)}/manifest.json").json()

    # Retention

    def set_legal_hold(self, package_id: str | uuid.UUID, reason: str) -> Package:
        url = f"/packages/{_id(package_id)}/legal-hold"
        return Package.from_dict(self._request("PUT", url, json={"reason": reason}).json())

    def release_legal_hold(self, package_id: str | uuid.UUID) -> Package:
        return Package.from_dict(self._request("DELETE", f"/packages/{_id(package_id)}/legal-hold").json())

    def change_retention(self, package_id: str | uuid.UUID, retention_class: str, *, force: bool = False) -> Package:
        body = {"retention_class": retention_class, "force": force}
        return Package.from_dict(self._request("PATCH", f"/packages/{_id(package_id)}/retention", json=body).json())

    # Files in

    def put_file(
        self,
        package_id: str | uuid.UUID,
        relative_path: str,
        data: bytes | BinaryIO,
        *,
        media_type: str | None = None,
        expected_digest: str | None = None,
        replace: bool = False,
        if_match: str | None = None,
    ) -> FileInfo:
        """One request with the bytes (streamed from a file object): for small files.

        `if_match` (an ETag, `'"' + file.content_address + '"'`, or `*`) replaces the file at
        the path only while it is that one; otherwise `errors.PreconditionFailed`.
        """
        params: dict[str, str] = {}
        if expected_digest:
            params["expected_digest"] = expected_digest
        if replace:
            params["replace"] = "true"
        headers = {"Content-Type": media_type or "application/octet-stream"}
        if if_match:
            headers["If-Match"] = if_match
        url = f"/packages/{_id(package_id)}/files/{_file_path(relative_path)}"
        response = self._request("PUT", url, params=params, headers=headers, content=data)
        return FileInfo.from_dict(response.json())

    def post_file(
        self,
        package_id: str | uuid.UUID,
        relative_path: str,
        source: str | os.PathLike[str],
        *,
        media_type: str | None = None,
        replace: bool = False,
    ) -> FileInfo:
        """A `multipart/form-data` upload of a file on disk (what an HTML form sends)."""
        with open(source, "rb") as f:
            files = {"file": (Path(source).name, f, media_type or "application/octet-stream")}
            data = {"relative_path": relative_path}
            params = {"replace": "true"} if replace else {}
            response = self._request(
                "POST", f"/packages/{_id(package_id)}/files", params=params, data=data, files=files
            )
        return FileInfo.from_dict(response.json())

    def start_upload(
        self,
        package_id: str | uuid.UUID,
        relative_path: str,
        *,
        size: int | None = None,
        expected_digest: str | None = None,
        media_type: str | None = None,
        replace: bool = False,
    ) -> Upload:
        """An upload session: send its bytes with `upload_file(..., session=...)`."""
        body: dict[str, Any] = {"package_id": _id(package_id), "relative_path": relative_path, "replace": replace}
        for name, value in (("size", size), ("expected_digest", expected_digest), ("media_type", media_type)):
            if value is not None:
                body[name] = value
        return Upload.from_dict(self._request("POST", "/uploads", json=body).json())

    def get_upload(self, upload_id: str | uuid.UUID) -> Upload:
        return Upload.from_dict(self._request("GET", f"/uploads/{_id(upload_id)}").json())

    def upload_file(
        self,
        package_id: str | uuid.UUID,
        relative_path: str,
        source: str | os.PathLike[str],
        *,
        session: str | uuid.UUID | None = None,
        chunk_size: int = 16 * MiB,
        media_type: str | None = None,
        replace: bool = False,
        attempts: int = 12,
    ) -> FileInfo:
        """Uploads a file on disk through an upload session, in chunks, and completes it.

        The file's BLAKE3 goes with the session, so the server refuses any other bytes. A chunk
        that fails (connection lost, 503, a server restarted behind a load balancer) is resumed
        from the offset the session holds, up to `attempts` times in a row. Pass `session` (an
        upload id from `start_upload` or an earlier, interrupted call) to resume it."""
        size = os.path.getsize(source)
        if session is None:
            digest = "blake3:" + _blake3_of(source)
            upload = self.start_upload(
                package_id, relative_path, size=size, expected_digest=digest, media_type=media_type, replace=replace
            )
        else:
            upload = self.get_upload(session)
        offset, failures = upload.offset, 0
        with open(source, "rb") as f:
            while offset < size:
                f.seek(offset)
                chunk = f.read(min(chunk_size, size - offset))
                end = offset + len(chunk) - 1
                try:
                    response = self._request(
                        "PATCH",
                        upload.upload_url,
                        content=chunk,
                        headers={
                            "Content-Range": f"bytes {offset}-{end}/{size}",
                            "Content-Type": "application/octet-stream",
                        },
                    )
                    offset, failures = int(response.headers["upload-offset"]), 0
                except RangeNotSatisfiable as e:
                    # The session is elsewhere than this chunk thought: go on from there (the
                    # same offset again would be no progress).
                    if e.offset is None or e.offset == offset:
                        raise
                    offset = e.offset
                except (httpx.TransportError, ArtifactStoreError) as e:
                    failures = self._wait_to_retry(e, failures, attempts)
                    with contextlib.suppress(httpx.TransportError, ArtifactStoreError):
                        offset = self.get_upload(upload.id).offset  # (else: this try's failure)
        # Completing is retried the same way (429: a completion still running, say one whose
        # answer was lost); a session gone after such a try may have become the file.
        failures = 0
        while True:
            try:
                response = self._request("POST", f"/uploads/{_id(upload.id)}/complete")
                return FileInfo.from_dict(response.json())
            except NotFound:
                if failures == 0:
                    raise
                digest = _blake3_of(source)
                package = self.get_package(upload.package_id)
                for f in package.files or []:
                    if f.relative_path == upload.relative_path and f.digests.blake3 == digest:
                        return f
                raise
            except (httpx.TransportError, ArtifactStoreError) as e:
                failures = self._wait_to_retry(e, failures, attempts)

    @staticmethod
    def _wait_to_retry(error: Exception, failures: int, attempts: int) -> int:
        """Sleeps before the next try after `error` and returns the failures so far; raises
        `error` if it will not pass (or the tries ran out). What passes: a lost connection, 429
        (a session busy with another request, or with the claim of a server that died), 502,
        503 and 504 (the server, or the one behind a load balancer, away for now)."""
        passes = isinstance(error, httpx.TransportError) or (
            isinstance(error, ArtifactStoreError) and error.status in (429, 502, 503, 504)
        )
        failures += 1
        if not passes or failures >= attempts:
            raise error
        asked = getattr(error, "retry_after", None) or 0
        time.sleep(max(asked, min(0.1 * 2**failures, 5.0)))
        return failures

    def upload_directory(
        self,
        package_id: str | uuid.UUID,
        root: str | os.PathLike[str],
        *,
        prefix: str = "",
        **options: Any,
    ) -> list[FileInfo]:
        """Every regular file under `root` (symbolic links not followed), in path order, named
        `prefix` + its path relative to `root` with `/` separators."""
        root = Path(root)
        uploaded = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                relative = prefix + path.relative_to(root).as_posix()
                uploaded.append(self.upload_file(package_id, relative, path, **options))
        return uploaded

    # Files out

    def get_file(self, file_id: str | uuid.UUID) -> FileInfo:
        return FileInfo.from_dict(self._request("GET", f"/files/{_id(file_id)}").json())

    def read_range(self, file_id: str | uuid.UUID, start: int, end: int) -> bytes:
        """Bytes `start` to `end` (inclusive) of a file."""
        response = self._request("GET", f"/files/{_id(file_id)}/download", headers={"Range": f"bytes={start}-{end}"})
        if response.status_code != 206:
            raise ArtifactStoreError(response.status_code, {"detail": "the server answered the whole file to a range"})
        return response.content

    def download(
        self,
        file_id: str | uuid.UUID,
        destination: str | os.PathLike[str],
        *,
        expected_digest: str | None = None,
    ) -> FileInfo:
        """Streams a file to `destination`, hashing as it goes: the bytes must have the BLAKE3
        and SHA-256 the server records (and `expected_digest`, `blake3:<hex>` or
        `sha256:<hex>`, if given), else `DigestMismatch` and nothing is written. The file
        appears at `destination` whole or not at all."""
        info = self.get_file(file_id)
        destination = Path(destination)
        b3, sha = blake3.blake3(), hashlib.sha256()
        fd, partial = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        try:
            with os.fdopen(fd, "wb") as out:
                with self._http.stream("GET", f"/files/{_id(file_id)}/download") as response:
                    raise_for_problem(response)
                    for chunk in response.iter_bytes(MiB):
                        b3.update(chunk)
                        sha.update(chunk)
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = {"blake3": b3.hexdigest(), "sha256": sha.hexdigest()}
            wanted = {"blake3": info.digests.blake3, "sha256": info.digests.sha256}
            if expected_digest:
                algorithm, _, hexdigest = expected_digest.partition(":")
                if algorithm not in wanted:
                    raise ValueError(f"expected_digest must be blake3:<hex> or sha256:<hex>, not {expected_digest!r}")
                if hexdigest.lower() != wanted[algorithm]:
                    raise DigestMismatch(
                        f"file {_id(file_id)} is {algorithm}:{wanted[algorithm]}, not {expected_digest}"
                    )
            for algorithm, value in actual.items():
                if value != wanted[algorithm]:
                    raise DigestMismatch(
                        f"file {_id(file_id)}: received {algorithm}:{value}, the server records {wanted[algorithm]}"
                    )
            os.replace(partial, destination)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return info

    # Events

    def events(
        self,
        since: int = 0,
        *,
        types: str | None = None,
        follow: bool = True,
        wait: int = 30,
        page_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """The tenant's events after `since`, in order, as dicts (`sequence`, `type`,
        `subject_id`, `payload`, ...). With `follow`, waits for new ones forever (long-polls of
        `wait` seconds); without, stops at the end of the log. `types` is a type prefix such as
        `v1.package.`."""
        while True:
            params: dict[str, Any] = {"since": since, "limit": page_size, "wait": wait if follow else 0}
            if types:
                params["type"] = types
            timeout = httpx.Timeout(self._http.timeout.read or 60, read=wait + 30)
            page = self._request(
                "GET", "/events", params=params, headers={"Accept": "application/json"}, timeout=timeout
            ).json()
            yield from page["events"]
            since = page["next_since"]
            if not page["events"] and not follow:
                return


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _blake3_of(source: str | os.PathLike[str]) -> str:
    hasher = blake3.blake3()
    with open(source, "rb") as f:
        while chunk := f.read(4 * MiB):
            hasher.update(chunk)
    return hasher.hexdigest()
