"""The public surface: one sorted __all__ of names that exist, and private modules behind it."""

from __future__ import annotations

import synkworld


def test_all_is_sorted_and_complete() -> None:
    names = synkworld.__all__
    # isort-style, as ruff's RUF022 wants: CONSTANTS, then Classes, then functions.
    assert names == sorted(
        names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )
    for name in names:
        assert hasattr(synkworld, name), name
    public = {n for n in dir(synkworld) if not n.startswith("_")}
    helpers = {"TYPE_CHECKING", "Any", "importlib"}
    modules = {n for n in public if type(getattr(synkworld, n)).__name__ == "module"}
    assert public - modules - helpers == set(names)


def test_exported_members_say_they_belong_to_synkworld() -> None:
    for name in synkworld.__all__:
        member = getattr(synkworld, name)
        if isinstance(member, type) or callable(member):
            assert member.__module__ == "synkworld", (name, member.__module__)
