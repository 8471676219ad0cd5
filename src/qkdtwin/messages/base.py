"""The base of every control-plane message and its validating decoder.

A message class is a keyword-only dataclass with the wire type in ``TYPE`` and the topic it
travels on in ``TOPIC`` (for the docs). Its field names are the payload's keys. Decoding
refuses, with a :class:`BadMessage` that says why: a payload over :data:`MAX_PAYLOAD_BYTES`
(checked before parsing), not JSON, not an object, another ``type``, an unknown schema
version, a missing required field or a field of the wrong type. Keys the class does not name
are kept in ``extra`` and sent again by :meth:`Message.to_payload` (events carry free
fields; a newer producer may add some), so decoding and re-encoding loses nothing.

Schema version: the key ``v``. Every producer sends ``v: 1``. A payload without ``v`` is read
as version 1, because a message published before this field existed may still be retained
on the broker (topology, alarms) or come from an element that was not restarted yet; any
other value than a supported version is refused.
"""

from __future__ import annotations

import dataclasses
import json
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
# Far above the largest real payload (a topology of a few hundred nodes is ~100 KiB); the
# bound is checked on the raw bytes, before any parsing.
MAX_PAYLOAD_BYTES = 512 * 1024

M = TypeVar("M", bound="Message")


class BadMessage(ValueError):
    """A payload that is not a valid message; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str, msg_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.msg_type = msg_type


def doc(text: str) -> Any:
    """Field metadata: the field's note in the docs' message table."""
    return {"doc": text}


@dataclass(kw_only=True)
class Message:
    """Fields every payload carries: ``ts`` (epoch seconds) and ``v`` (schema version)."""

    TYPE: ClassVar[str] = ""
    TOPIC: ClassVar[str] = ""   # as written in the docs' table, e.g. "`admission/in`"
    NOTE: ClassVar[str] = ""    # a sentence after the fields in the docs' table
    LABEL: ClassVar[str] = ""   # after the type in the docs' table, when a type has variants

    ts: float = field(default_factory=time.time)
    v: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_payload(self) -> dict[str, Any]:
        """The JSON object that goes on the wire (``extra`` keys included)."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and not (value is None and f.metadata.get("omit_none")):
                out[f.name] = value
        for k, val in self.extra.items():
            out.setdefault(k, val)
        return out

    @classmethod
    def wire_fields(cls) -> list[dataclasses.Field]:
        """The payload fields of this type (without the common ``ts``, ``v``, ``extra``)."""
        return [f for f in dataclasses.fields(cls) if f.name not in ("ts", "v", "extra")]


def parse_json(payload: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The payload as a JSON object: size bound first, then parsing, then the shape."""
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise BadMessage(f"payload of type {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadMessage(f"payload of {len(payload)} bytes is over the limit of "
                         f"{MAX_PAYLOAD_BYTES}")
    try:
        obj = json.loads(bytes(payload) or b"{}")
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise BadMessage(f"not a JSON object but a {type(obj).__name__}")
    return obj


def check_version(obj: dict[str, Any]) -> int:
    ver = obj.get("v", 1)
    if isinstance(ver, bool) or ver not in SUPPORTED_VERSIONS:
        raise BadMessage(f"unknown schema version {ver!r} (supported: "
                         f"{sorted(SUPPORTED_VERSIONS)})", _type_of(obj))
    return int(ver)


def _type_of(obj: dict[str, Any]) -> str | None:
    t = obj.get("type")
    return t if isinstance(t, str) else None


def decode(payload: bytes | str | dict[str, Any], cls: type[M]) -> M:
    """``payload`` as a ``cls`` message; :class:`BadMessage` with the reason otherwise."""
    obj = parse_json(payload)
    kind = _type_of(obj)
    if kind != cls.TYPE:
        raise BadMessage(f"type {obj.get('type')!r} where {cls.TYPE!r} was expected", kind)
    return build(cls, obj)


def build(cls: type[M], obj: dict[str, Any]) -> M:
    """A ``cls`` from an already parsed object of its type (version and fields checked)."""
    check_version(obj)
    hints = _hints(cls)
    known: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        if f.name not in obj:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BadMessage(f"{cls.TYPE}: missing field {f.name!r}", cls.TYPE)
            continue
        value = obj[f.name]
        if not conforms(value, hints[f.name]):
            raise BadMessage(f"{cls.TYPE}: field {f.name!r} must be {_name(hints[f.name])}, "
                             f"not {type(value).__name__}", cls.TYPE)
        known[f.name] = float(value) if hints[f.name] is float else value
    extra = {k: val for k, val in obj.items() if k not in known and k != "type"
             and k not in {f.name for f in dataclasses.fields(cls)}}
    return cls(**known, extra=extra)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def conforms(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits the annotation ``tp`` (JSON numbers: an int is a float)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(conforms(x, args[0])
                                                            for x in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    raise TypeError(f"unsupported annotation {tp!r}")


def _name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_name(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return "a list" + (f" of {_name(typing.get_args(tp)[0])}" if typing.get_args(tp)
                           else "")
    if typing.get_origin(tp) is dict:
        return "an object"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            dict: "an object", list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))
