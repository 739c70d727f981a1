"""The store package's public names, and what importing it drags in."""

from __future__ import annotations

import subprocess
import sys

import synkworld.store


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = synkworld.store.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(synkworld.store, name) is not None, name


def test_importing_the_package_does_not_import_a_database_driver() -> None:
    # The tick loop imports synkworld.store for WriteBehind; PyMongo comes only
    # with MongoStore.
    code = (
        "import sys, synkworld.store\n"
        "print(sorted(m for m in ('pymongo', 'bson', 'motor') if m in sys.modules))\n"
        "synkworld.store.MongoStore\n"
        "print('pymongo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.split("\n")[:2] == ["[]", "True"]
