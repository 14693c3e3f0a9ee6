"""artifact-store's Python client.

`Client` wraps the client generated from the server's OpenAPI spec (`Client.api`, with every
operation under `artifactstore._generated.api`) and adds what streaming needs: uploads from
disk by session with resume, downloads to a path with digest verification, the event log as an
iterator. Refusals raise the `errors` module's exceptions, each carrying its problem document.
"""

from . import errors
from .client import Client, DigestMismatch
from .errors import ArtifactStoreError

__all__ = ["ArtifactStoreError", "Client", "DigestMismatch", "errors"]
