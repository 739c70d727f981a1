"""SynkObject: the base class of world objects, their declared fields and the type registry.

A subclass names its type key and declares its fields with annotations::

    class Boat(SynkObject, type="boat"):
        name: str
        x: float
        y: float
        hp: int = 100

Assigning a field only records that it changed; the world's tick turns the
changes into messages. A type declared with ``persist=False`` (a player's
avatar, a cursor) is synced to clients like any other but never written to a
store. A class that declares the two position fields of a map
(``x`` and ``y`` unless ``position=`` names others) is *positioned*: its key is
the cell it stands in, and while it is in a world its position lives in the
world's numpy columns so that motion can be handled in bulk. Any other class is
a *channel* object, held under a fixed key given when it is created.
"""

from __future__ import annotations

import inspect
import math
import numbers
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, Union

import orjson

from synkworld._errors import DeclarationError, DocumentError, FieldError

if TYPE_CHECKING:
    from synkworld._columns import Columns
    from synkworld._grid import GridMap

__all__ = ["Binding", "FieldSpec", "ObjectHost", "SynkObject", "object_type", "registered_types"]


class ObjectHost(Protocol):
    """What an object in a world tells that world, and asks of it (the world implements it)."""

    def field_changed(self, obj: SynkObject, name: str) -> None:
        """Records that a field of `obj` changed (for the next tick)."""

    def changed_fields(self, obj: SynkObject) -> list[str]:
        """The fields of `obj` changed since the last tick."""


class Binding:
    """Where an object stands while it is in a world: the world, its columns, its slot.

    The world makes one when it creates the object and hands it over with
    `SynkObject._bind`; `_unbind` takes it back. Besides these two, the world
    reads an object's `_binding` and its `_values` (the state of the fields
    that are not positions): nothing else of an object is touched from outside.
    """

    __slots__ = ("channel", "cols", "host", "map", "slot")

    def __init__(
        self,
        host: ObjectHost,
        cols: Columns,
        slot: int,
        gmap: GridMap | None,
        channel: str | None,
    ) -> None:
        self.host = host
        self.cols = cols
        self.slot = slot
        self.map = gmap
        self.channel = channel


_RESERVED: Final = frozenset(
    {"id", "t", "v", "k", "key", "type", "version", "world", "state", "diff", "map", "owner"}
)
_KINDS: Final = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}
_TYPES: dict[str, type[SynkObject]] = {}
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A declared field: its name, its kind, whether None is allowed, and its default."""

    name: str
    kind: str  # int, float, str, bool, list, dict or any
    optional: bool
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        """Tells whether a value must be given when an object is made."""
        return self.default is _MISSING

    def coerce(self, value: Any, owner: str) -> Any:
        """Returns `value` in the field's canonical Python type, or raises FieldError."""
        if value is None:
            if self.optional:
                return None
            raise FieldError(f"{owner}.{self.name} must not be None")
        kind = self.kind
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise FieldError(f"{owner}.{self.name} must be a number, not {_tname(value)}")
            f = float(value)
            if not math.isfinite(f):
                raise FieldError(f"{owner}.{self.name} must be finite, not {f}")
            return f
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise FieldError(f"{owner}.{self.name} must be an int, not {_tname(value)}")
            return int(value)
        if kind == "str":
            if not isinstance(value, str):
                raise FieldError(f"{owner}.{self.name} must be a str, not {_tname(value)}")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise FieldError(f"{owner}.{self.name} must be a bool, not {_tname(value)}")
            return value
        if kind == "list" and not isinstance(value, list):
            raise FieldError(f"{owner}.{self.name} must be a list, not {_tname(value)}")
        if kind == "dict" and not isinstance(value, dict):
            raise FieldError(f"{owner}.{self.name} must be a dict, not {_tname(value)}")
        try:
            orjson.dumps(value)
        except TypeError as e:
            raise FieldError(f"{owner}.{self.name} must be JSON-encodable: {e}") from None
        return value


def _tname(value: object) -> str:
    return type(value).__name__


class _Field:
    """The descriptor behind one declared, non-position field."""

    __slots__ = ("name", "spec")

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec
        self.name = spec.name

    def __get__(self, obj: SynkObject | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._values[self.name]

    def __set__(self, obj: SynkObject, value: Any) -> None:
        value = self.spec.coerce(value, obj.synk_type)
        values = obj._values
        old = values.get(self.name, _MISSING)
        if old is value or (type(old) is type(value) and old == value):
            return
        values[self.name] = value
        binding = obj._binding
        if binding is not None:
            binding.host.field_changed(obj, self.name)


class _PosField:
    """The descriptor behind one of the two position fields."""

    __slots__ = ("axis", "name")

    def __init__(self, name: str, axis: int) -> None:
        self.name = name
        self.axis = axis

    def __get__(self, obj: SynkObject | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        binding = obj._binding
        if binding is None:
            return obj._values[self.name]
        return float(binding.cols.pos[self.axis][binding.slot])

    def __set__(self, obj: SynkObject, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise FieldError(f"{obj.synk_type}.{self.name} must be a number, not {_tname(value)}")
        f = float(value)
        if not math.isfinite(f):
            raise FieldError(f"{obj.synk_type}.{self.name} must be finite, not {f}")
        binding = obj._binding
        if binding is None:
            obj._values[self.name] = f
        else:
            # Motion is found at the tick by comparing the columns with their
            # values at the last tick, so a move needs no dirty bookkeeping here.
            binding.cols.check_position(binding.slot, f)
            binding.cols.pos[self.axis][binding.slot] = f


class SynkObject:
    """The base class of every object in a world.

    Subclass it with ``type="<key>"`` and annotated fields. Instances are made
    with keyword arguments for the fields (and an optional ``id``), then placed
    in a world with `World.create`.
    """

    __slots__ = ("__weakref__", "_binding", "_values", "_ver", "id")

    synk_type: ClassVar[str] = ""
    synk_fields: ClassVar[Mapping[str, FieldSpec]] = {}
    synk_position: ClassVar[tuple[str, str] | None] = None
    synk_persist: ClassVar[bool] = True

    id: str
    _values: dict[str, Any]
    _binding: Binding | None
    _ver: int

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        position: tuple[str, str] | None = None,
        persist: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if persist is not None:
            cls.synk_persist = bool(persist)
        fields = dict(cls.synk_fields)
        hints = _own_hints(cls)
        for name, hint in hints.items():
            if name.startswith("_") or typing.get_origin(hint) is ClassVar or hint is ClassVar:
                continue
            if name in _RESERVED:
                raise DeclarationError(f"{cls.__qualname__}: field name {name!r} is reserved")
            kind, optional = _kind_of(cls, name, hint)
            default = cls.__dict__.get(name, _MISSING)
            spec = FieldSpec(name, kind, optional, default)
            if default is not _MISSING:
                spec = FieldSpec(name, kind, optional, spec.coerce(default, cls.__qualname__))
            fields[name] = spec
        cls.synk_fields = types.MappingProxyType(fields)

        if position is not None:
            pos: tuple[str, str] | None = (position[0], position[1])
        elif cls.synk_position is not None:
            pos = cls.synk_position
        elif "x" in fields and "y" in fields:
            pos = ("x", "y")
        else:
            pos = None
        if pos is not None:
            for p in pos:
                spec_p = fields.get(p)
                if spec_p is None:
                    raise DeclarationError(
                        f"{cls.__qualname__}: position field {p!r} is not declared"
                    )
                if spec_p.kind != "float" or spec_p.optional:
                    raise DeclarationError(
                        f"{cls.__qualname__}: position field {p!r} must be declared as float"
                    )
        cls.synk_position = pos

        for name, spec in fields.items():
            if pos is not None and name in pos:
                setattr(cls, name, _PosField(name, pos.index(name)))
            else:
                setattr(cls, name, _Field(spec))

        if type is not None:
            if not isinstance(type, str) or not type or len(type) > 64:
                raise DeclarationError(
                    f"{cls.__qualname__}: type key must be a short non-empty str"
                )
            old = _TYPES.get(type)
            if old is not None and (old.__module__, old.__qualname__) != (
                cls.__module__,
                cls.__qualname__,
            ):
                raise DeclarationError(
                    f"type key {type!r} is taken by {old.__module__}.{old.__qualname__}"
                )
            cls.synk_type = type
            _TYPES[type] = cls
        else:
            # A subclass without a type key of its own is abstract until one names it.
            cls.synk_type = ""

    def __init__(self, *, id: str | None = None, **fields: Any) -> None:
        cls = type(self)
        if not cls.synk_type:
            raise DeclarationError(f"{cls.__qualname__} has no type key; declare type='...'")
        if id is not None and (not isinstance(id, str) or not id):
            raise FieldError(f"{cls.synk_type}: id must be a non-empty str")
        self.id = id or ""
        self._binding = None
        self._ver = 0
        self._values = _checked_values(cls, fields, error=FieldError, doc_id=None)

    # -- identity ----------------------------------------------------------------

    @property
    def version(self) -> int:
        """1 when created, then one more for every tick in which the object changed."""
        binding = self._binding
        if binding is None:
            return self._ver
        return int(binding.cols.ver[binding.slot])

    @property
    def key(self) -> str | None:
        """The subscription key the object stands under now (None before it is in a world)."""
        binding = self._binding
        if binding is None:
            return None
        if binding.channel is not None:
            return binding.channel
        gmap = binding.map
        if gmap is None or self.synk_position is None:
            return None
        px, py = self.synk_position
        return gmap.key_of(getattr(self, px), getattr(self, py))

    @property
    def world(self) -> ObjectHost | None:
        """The world the object is in, if any."""
        binding = self._binding
        return binding.host if binding is not None else None

    # -- state -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Every declared field and its current value."""
        out = dict(self._values)
        binding = self._binding
        pos = self.synk_position
        if binding is not None and pos is not None:
            cols, slot = binding.cols, binding.slot
            out[pos[0]] = float(cols.pos[0][slot])
            out[pos[1]] = float(cols.pos[1][slot])
        return out

    def diff(self) -> dict[str, Any]:
        """The fields changed since the last tick and their new values."""
        binding = self._binding
        if binding is None:
            return {}
        names = binding.host.changed_fields(self)
        state = self.state()
        return {n: state[n] for n in names}

    def touch(self, *names: str) -> None:
        """Marks fields as changed after their value was mutated in place (a list, a dict)."""
        for name in names:
            if name not in self.synk_fields:
                raise FieldError(f"{self.synk_type} has no field {name!r}")
            if self._binding is not None:
                self._binding.host.field_changed(self, name)

    # -- in a world ------------------------------------------------------------------

    def _bind(self, binding: Binding) -> None:
        """Enters a world: a positioned object's position moves into the world's columns.

        The world has written the position (`_values`' two position fields) and
        the version into `binding.cols` at `binding.slot` already.
        """
        pos = self.synk_position
        if pos is not None and binding.map is not None:
            del self._values[pos[0]], self._values[pos[1]]
        self._binding = binding

    def _unbind(self) -> None:
        """Leaves the world: the position and the version come back from its columns."""
        binding = self._binding
        if binding is None:
            return
        cols, slot = binding.cols, binding.slot
        pos = self.synk_position
        if pos is not None and binding.map is not None:
            self._values[pos[0]] = float(cols.pos[0][slot])
            self._values[pos[1]] = float(cols.pos[1][slot])
        self._ver = int(cols.ver[slot])
        self._binding = None

    def wire_state(self) -> dict[str, Any]:
        """The full state as clients receive it: positions rounded to the map's precision."""
        out = self.state()
        binding = self._binding
        gmap = binding.map if binding is not None else None
        pos = self.synk_position
        if gmap is not None and pos is not None:
            out[pos[0]] = gmap.round_pos(out[pos[0]])
            out[pos[1]] = gmap.round_pos(out[pos[1]])
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} v{self.version} {self.state()!r}>"

    # -- documents -----------------------------------------------------------------

    @classmethod
    def from_state(cls, id: str, state: Mapping[str, Any], *, version: int = 0) -> SynkObject:
        """Makes an object of this type from a full state (as loaded from a store)."""
        obj = cls.__new__(cls)
        obj.id = id
        obj._binding = None
        obj._ver = version
        obj._values = _checked_values(cls, state, error=DocumentError, doc_id=id)
        return obj


def _checked_values(
    cls: type[SynkObject],
    given: Mapping[str, Any],
    *,
    error: type[FieldError],
    doc_id: object,
) -> dict[str, Any]:
    where = (
        f"document {doc_id!r} of type {cls.synk_type!r}" if doc_id is not None else cls.synk_type
    )
    fields = cls.synk_fields
    unknown = [k for k in given if k not in fields]
    if unknown:
        raise _error(error, f"{where}: unknown field {unknown[0]!r}", doc_id)
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name in given:
            try:
                values[name] = spec.coerce(given[name], cls.synk_type)
            except FieldError as e:
                raise _error(error, f"{where}: {e}", doc_id) from None
        elif spec.required:
            raise _error(error, f"{where}: missing field {name!r}", doc_id)
        else:
            d = spec.default
            # Mutable defaults are copied so that objects never share a list or dict.
            values[name] = orjson.loads(orjson.dumps(d)) if isinstance(d, list | dict) else d
    return values


def _error(error: type[FieldError], msg: str, doc_id: object) -> FieldError:
    if error is DocumentError:
        return DocumentError(msg, doc_id=doc_id)
    return error(msg)


def _own_hints(cls: type) -> dict[str, Any]:
    """Resolves the annotations the class itself declares (not its bases', already done)."""
    raw = inspect.get_annotations(cls)
    module = sys.modules.get(cls.__module__)
    globalns = vars(module) if module is not None else {}
    out: dict[str, Any] = {}
    for name, ann in raw.items():
        if isinstance(ann, str):
            try:
                # Annotations are code the class author wrote; this is what typing does too.
                ann = eval(ann, globalns, dict(vars(cls)))
            except Exception as e:
                raise DeclarationError(
                    f"{cls.__qualname__}.{name}: cannot resolve annotation {ann!r}: {e}"
                ) from e
        out[name] = ann
    return out


def _kind_of(cls: type, name: str, hint: Any) -> tuple[str, bool]:
    optional = False
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise DeclarationError(f"{cls.__qualname__}.{name}: only 'T | None' unions are allowed")
        optional = True
        hint = args[0]
        origin = typing.get_origin(hint)
    if hint is Any:
        return "any", optional
    base = origin if origin is not None else hint
    kind = _KINDS.get(base)
    if kind is None:
        raise DeclarationError(
            f"{cls.__qualname__}.{name}: unsupported field type {hint!r}; "
            "use int, float, str, bool, list, dict, Any or 'T | None'"
        )
    return kind, optional


def object_type(type_key: str) -> type[SynkObject]:
    """The registered class of a type key; KeyError if none."""
    return _TYPES[type_key]


def registered_types() -> Mapping[str, type[SynkObject]]:
    """Every registered type key and its class."""
    return types.MappingProxyType(_TYPES)
