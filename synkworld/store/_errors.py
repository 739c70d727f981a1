"""The errors of the store package.

`StoreError` and `StoreUnavailableError` are synkworld's own (from
`synkworld._errors`), re-exported here so that the store code has one place
to import them from::

    SynkError
    └── StoreError                  persistence failed
        ├── StoreUnavailableError   the database cannot be reached (retry later)
        └── DocumentRejectedError   the store refuses one document for good

A store never raises `DocumentRejectedError` out of `apply()`: it reports each
refused document in `WriteResult.rejected` and writes the rest of the batch.
The error is what `WriteResult.raise_for_rejected()` raises, and what the
stores' validation raises internally.
"""

from __future__ import annotations

from synkworld._errors import StoreError, StoreUnavailableError

__all__ = ["DocumentRejectedError", "StoreError", "StoreUnavailableError"]


class DocumentRejectedError(StoreError):
    """The store refuses a document for good: retrying the same document cannot succeed."""

    def __init__(self, reason: str, *, doc_id: str | None = None) -> None:
        super().__init__(reason if doc_id is None else f"document {doc_id!r}: {reason}")
        self.reason = reason
        self.doc_id = doc_id
