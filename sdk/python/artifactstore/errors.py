"""Problems (RFC 7807) as exceptions: one class per kind of refusal, each carrying the problem."""

from __future__ import annotations

import json
from typing import Any

import httpx


class ArtifactStoreError(Exception):
    """A request the server refused or could not answer; `problem` is its problem document."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        self.type: str = problem.get("type", "about:blank")
        self.detail: str = problem.get("detail", "")
        self.request_id: str | None = problem.get("request_id")
        where = f" (request {self.request_id})" if self.request_id else ""
        super().__init__(f"{status} {problem.get('title', '')}: {self.detail}{where}")

    @property
    def offset(self) -> int | None:
        """For an upload chunk that does not start where the session is: where it is."""
        return self.problem.get("offset")


class BadRequest(ArtifactStoreError):
    """400: the request is malformed."""


class Unauthorized(ArtifactStoreError):
    """401: no token, or one the server does not know."""


class Forbidden(ArtifactStoreError):
    """403: the token's scope is too small."""


class NotFound(ArtifactStoreError):
    """404: no such thing for this tenant (another tenant's looks the same)."""


class Conflict(ArtifactStoreError):
    """409: the state forbids it (a finalized package, a path taken)."""


class Gone(ArtifactStoreError):
    """410: expired, abandoned or withdrawn (or, for an upload session, ended)."""


class PreconditionFailed(ArtifactStoreError):
    """412: `If-Match` names another file than the one at the path; nothing changed."""


class PayloadTooLarge(ArtifactStoreError):
    """413: past a configured limit."""


class RangeNotSatisfiable(ArtifactStoreError):
    """416: the range lies outside the file, or an upload chunk does not start where the
    session is (`offset` then says where to resume)."""


class InvalidInput(ArtifactStoreError):
    """415 or 422: well-formed but invalid (a `..` segment, a wrong digest, an unknown class)."""


class TooManyRequests(ArtifactStoreError):
    """429: too many waiting requests; retry after `retry_after` seconds."""


class InsufficientStorage(ArtifactStoreError):
    """507: past the tenant's quota, or the server's disk is full."""


class Unavailable(ArtifactStoreError):
    """500 or 503: the server's fault or a dependency's; 503 may be retried."""


_BY_STATUS: dict[int, type[ArtifactStoreError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: InvalidInput,
    416: RangeNotSatisfiable,
    422: InvalidInput,
    429: TooManyRequests,
    507: InsufficientStorage,
}


def _head_of(response: httpx.Response, most: int = 64 * 1024) -> bytes:
    """The first `most` bytes of an error answer's body: a problem document is far smaller, and
    whatever else a server (or a proxy before it) sends is not read whole."""
    try:
        return response.content[:most]
    except httpx.ResponseNotRead:
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= most:
                break
        return body[:most]


def raise_for_problem(response: httpx.Response) -> None:
    """Raises the exception of `response`'s status if it is 4xx or 5xx."""
    if response.status_code < 400:
        return
    body = _head_of(response)
    try:
        problem = json.loads(body)
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": body[:1024].decode("utf-8", "replace")}
    kind = _BY_STATUS.get(response.status_code, Unavailable if response.status_code >= 500 else ArtifactStoreError)
    error = kind(response.status_code, problem)
    retry = response.headers.get("retry-after")
    error.retry_after = int(retry) if retry and retry.isdigit() else None
    raise error
