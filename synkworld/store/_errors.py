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

from synkworld._errors import DocumentRejectedError, StoreError, StoreUnavailableError

__all__ = ["DocumentRejectedError", "StoreError", "StoreUnavailableError"]
