"""Settings for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def spill_journals_in_a_temporary_directory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Stores without a spill path of their own would put their journals in the cwd."""
    old = os.environ.get("SYNKWORLD_SPILL_DIR")
    os.environ["SYNKWORLD_SPILL_DIR"] = str(tmp_path_factory.mktemp("spill"))
    yield
    if old is None:
        os.environ.pop("SYNKWORLD_SPILL_DIR", None)
    else:
        os.environ["SYNKWORLD_SPILL_DIR"] = old
