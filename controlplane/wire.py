"""The wire kernel: frozen dataclasses that know their JSON form and its constraints.

A model class is an ordinary frozen dataclass with Pythonic field names. Its JSON (wire) name is the
camelCase of the field name unless :func:`f` says otherwise, a field is required when it has no default,
and the constraints the CRD schema states (lengths, ranges, item counts, patterns) sit in the field's
metadata. That one description serves three readers, so they cannot drift apart:

* :func:`parse` turns a raw dict into the model and reports *every* problem with its path — unknown
  fields, wrong types, missing required fields, out-of-range values — instead of stopping at the first;
* :func:`dump` turns a model back into the wire dict (``parse(dump(x)) == x``);
* :func:`openapi_schema` renders the structural ``openAPIV3Schema`` for the CRDs.

Supported field types: ``str``, ``int``, ``bool``, :class:`enum.StrEnum` subclasses, nested dataclasses,
``tuple[X, ...]``, :class:`FrozenMap` of ``str`` to a supported type, and ``X | None``. A ``str`` field
marked ``int_or_string`` accepts integers too (Kubernetes resource quantities) and stores their text.

Only the standard library is imported: this is layer 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from meshplane.controlplane.problems import Problem, error

T = TypeVar("T")
V = TypeVar("V")

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class FrozenMap(Mapping[str, V]):
    """An immutable, hashable ``str`` → value mapping (labels, tags, selectors).

    Frozen dataclasses are only hashable if their fields are; a plain ``dict`` field would make every
    model unhashable and silently mutable.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, V] | None = None) -> None:
        self._data: dict[str, V] = dict(sorted((data or {}).items()))
        self._hash: int | None = None

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True, slots=True)
class Rules:
    """Constraints of one field, as the CRD schema states them."""

    wire: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    pattern: str | None = None
    fmt: str | None = None
    int_or_string: bool = False
    doc: str = ""


def f(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """Declare a model field with constraints; without a default the field is required.

    Defaults must be immutable (``None``, scalars, ``()``, an empty :class:`FrozenMap`).
    """
    return dataclasses.field(default=default, metadata={"rules": Rules(**rules)})


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    wire: str
    tp: Any
    rules: Rules
    required: bool
    default: Any


@functools.cache
def fields_of(cls: type) -> tuple[FieldInfo, ...]:
    """The wire view of a model class, computed once per class."""
    hints = typing.get_type_hints(cls)
    out = []
    for fld in dataclasses.fields(cls):
        rules: Rules = fld.metadata.get("rules", Rules())
        required = fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING
        default = None if required else fld.default
        out.append(FieldInfo(fld.name, rules.wire or camel(fld.name), hints[fld.name], rules, required, default))
    return tuple(out)


def _unwrap_optional(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


# --------------------------------------------------------------------------------------------- parse


def parse(cls: type[T], raw: Any, path: str) -> tuple[T | None, list[Problem]]:
    """Parse ``raw`` into ``cls``; the model is returned only when there is no problem at all."""
    problems: list[Problem] = []
    value = _parse(cls, Rules(), raw, path, problems)
    return (None if problems else value), problems


def _parse(tp: Any, rules: Rules, raw: Any, path: str, problems: list[Problem]) -> Any:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _parse_object(tp, raw, path, problems)
    if origin is tuple:
        return _parse_list(typing.get_args(tp)[0], rules, raw, path, problems)
    if origin is FrozenMap:
        return _parse_map(typing.get_args(tp)[0], _item_rules(rules), raw, path, problems)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _parse_enum(tp, raw, path, problems)
    return _parse_scalar(tp, rules, raw, path, problems)


def _parse_object(cls: type, raw: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(error(path, f"must be an object, not {_kind_of(raw)}"))
        return None
    infos = fields_of(cls)
    known = {i.wire for i in infos}
    for key in raw:
        if key not in known:
            problems.append(error(_join(path, str(key)), _unknown_field_message(str(key), known)))
    kwargs = {}
    for info in infos:
        value = raw.get(info.wire)
        if value is None:
            if info.required:
                problems.append(error(_join(path, info.wire), "required field is missing"))
            kwargs[info.name] = info.default
            continue
        kwargs[info.name] = _parse(info.tp, info.rules, value, _join(path, info.wire), problems)
    return cls(**kwargs)


def _unknown_field_message(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    allowed = ", ".join(sorted(known)) or "none"
    return f"unknown field{hint}; allowed fields: {allowed}"


def _parse_list(item_tp: Any, rules: Rules, raw: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, list):
        problems.append(error(path, f"must be a list, not {_kind_of(raw)}"))
        return ()
    if rules.min_items is not None and len(raw) < rules.min_items:
        problems.append(error(path, f"must have at least {rules.min_items} item(s), has {len(raw)}"))
    if rules.max_items is not None and len(raw) > rules.max_items:
        problems.append(error(path, f"must have at most {rules.max_items} item(s), has {len(raw)}"))
    item_rules = _item_rules(rules)
    return tuple(_parse(item_tp, item_rules, item, f"{path}[{i}]", problems) for i, item in enumerate(raw))


def _item_rules(rules: Rules) -> Rules:
    """Rules of a list's items or a map's values: the field's own, less counts and docs."""
    return dataclasses.replace(rules, min_items=None, max_items=None, doc="", wire=None)


def _parse_map(value_tp: Any, rules: Rules, raw: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(error(path, f"must be an object, not {_kind_of(raw)}"))
        return FrozenMap()
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            problems.append(error(path, f"keys must be strings, found {key!r}"))
            continue
        if value is None:
            problems.append(error(_join(path, key), "must not be null"))
            continue
        out[key] = _parse(value_tp, rules, value, _join(path, key), problems)
    return FrozenMap(out)


def _parse_enum(tp: type[enum.Enum], raw: Any, path: str, problems: list[Problem]) -> Any:
    allowed = [m.value for m in tp]
    if isinstance(raw, str) and raw in allowed:
        return tp(raw)
    problems.append(error(path, f"must be one of {', '.join(allowed)}; got {raw!r}"))
    return None


def _parse_scalar(tp: Any, rules: Rules, raw: Any, path: str, problems: list[Problem]) -> Any:
    if tp is bool:
        if not isinstance(raw, bool):
            problems.append(error(path, f"must be true or false, not {_kind_of(raw)}"))
        return raw
    if tp is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            problems.append(error(path, f"must be an integer, not {_kind_of(raw)}"))
            return raw
        _check_int(raw, rules, path, problems)
        return raw
    if tp is str:
        if rules.int_or_string and isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            problems.append(error(path, f"must be a string, not {_kind_of(raw)}"))
            return raw
        _check_str(raw, rules, path, problems)
        return raw
    raise TypeError(f"unsupported model type {tp!r} at {path}")  # a bug in a model class, not input


def _check_int(value: int, rules: Rules, path: str, problems: list[Problem]) -> None:
    low, high = INT32 if rules.fmt == "int32" else INT64
    if rules.minimum is not None:
        low = max(low, rules.minimum)
    if rules.maximum is not None:
        high = min(high, rules.maximum)
    if not low <= value <= high:
        problems.append(error(path, f"must be between {low} and {high}; got {value}"))


def _check_str(value: str, rules: Rules, path: str, problems: list[Problem]) -> None:
    if rules.min_length is not None and len(value) < rules.min_length:
        problems.append(error(path, f"must be at least {rules.min_length} character(s) long"))
    if rules.max_length is not None and len(value) > rules.max_length:
        problems.append(error(path, f"must be at most {rules.max_length} characters long; has {len(value)}"))
    if rules.pattern is not None and not re.fullmatch(rules.pattern, value):
        problems.append(error(path, f"{value!r} does not match the pattern {rules.pattern}"))


def _kind_of(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int | float):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, Mapping):
        return "an object"
    return type(raw).__name__


# ---------------------------------------------------------------------------------------------- dump


def dump(value: Any) -> Any:
    """The wire form of a model value: camelCase keys, absent optionals omitted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for info in fields_of(type(value)):
            item = getattr(value, info.name)
            if item is None or (item == () and info.default == ()):
                continue
            if isinstance(item, FrozenMap) and not item and not info.required:
                continue
            out[info.wire] = dump(item)
        return out
    if isinstance(value, tuple):
        return [dump(v) for v in value]
    if isinstance(value, FrozenMap):
        return {k: dump(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


# ------------------------------------------------------------------------------------- CRD schemas


def openapi_schema(tp: Any, rules: Rules | None = None) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model type (deterministic: properties sorted by name)."""
    rules = rules or Rules()
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    out: dict[str, Any] = {}
    if rules.doc:
        out["description"] = rules.doc
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        out.update(_object_schema(tp))
    elif origin is tuple:
        out["items"] = openapi_schema(typing.get_args(tp)[0], _item_rules(rules))
        out["type"] = "array"
        _put(out, maxItems=rules.max_items, minItems=rules.min_items)
    elif origin is FrozenMap:
        out.update(type="object", additionalProperties=openapi_schema(typing.get_args(tp)[0], _item_rules(rules)))
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        out.update(type="string", enum=[m.value for m in tp])
    else:
        out.update(_scalar_schema(tp, rules))
    return out


def _object_schema(cls: type) -> dict[str, Any]:
    infos = sorted(fields_of(cls), key=lambda i: i.wire)
    out: dict[str, Any] = {"type": "object"}
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc and not doc.startswith(cls.__name__ + "("):
        out["description"] = " ".join(doc.replace("``", "").split())
    if infos:
        out["properties"] = {i.wire: _field_schema(i) for i in infos}
    required = [i.wire for i in infos if i.required]
    if required:
        out["required"] = required
    return out


def _field_schema(info: FieldInfo) -> dict[str, Any]:
    schema = openapi_schema(info.tp, info.rules)
    if isinstance(info.default, bool | int | str) and not isinstance(info.default, enum.Enum):
        schema["default"] = info.default
    elif isinstance(info.default, enum.Enum):
        schema["default"] = info.default.value
    return schema


def _scalar_schema(tp: Any, rules: Rules) -> dict[str, Any]:
    if rules.int_or_string:
        out: dict[str, Any] = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
        _put(out, pattern=rules.pattern)
        return out
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        out = {"type": "integer"}
        _put(out, format=rules.fmt, minimum=rules.minimum, maximum=rules.maximum)
        return out
    if tp is str:
        out = {"type": "string"}
        _put(out, format=rules.fmt, minLength=rules.min_length, maxLength=rules.max_length, pattern=rules.pattern)
        return out
    raise TypeError(f"unsupported model type {tp!r}")


def _put(out: dict[str, Any], **values: Any) -> None:
    out.update({k: v for k, v in values.items() if v is not None})
