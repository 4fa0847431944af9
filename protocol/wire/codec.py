"""Frames, header and msgpack body of every message; field validation.

A control message is two frames ``[header, body]``; a stats message three,
``[topic, header, body]``. The header is fixed for every protocol version: magic
``b"LT"``, the protocol version (one byte) and the message type (one byte). It is
read first, so a peer speaking another version is named with both versions instead
of failing somewhere in its body. Bodies are msgpack arrays, one element per field,
decoded with size limits and checked field by field before any use. Never pickle.

Message type 0 (``REFUSED``) is the one body every version can read: a single
string. A master refuses an agent of another version with it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from protocol.wire.limits import CONTROL_MAX, format_size

__all__ = [
    "HEADER",
    "MAGIC",
    "PROTOCOL_VERSION",
    "REFUSED_TYPE",
    "Message",
    "MessageTooLarge",
    "Refused",
    "VersionMismatch",
    "WireError",
    "decode",
    "decode_joined",
    "decode_stats",
    "encode",
    "encode_joined",
    "encode_refused",
    "encode_stats",
    "expect",
    "pack",
    "read_header",
    "unpack_body",
]


MAGIC = b"LT"
PROTOCOL_VERSION = 7
HEADER = struct.Struct("!2sBB")
REFUSED_TYPE = 0


class WireError(ValueError):
    """A message that cannot be used: wrong shape, size or content."""


class VersionMismatch(WireError):
    def __init__(self, theirs: int, ours: int, msg_type: int, body: bytes) -> None:
        super().__init__(f"peer speaks protocol version {theirs}, we speak {ours}")
        self.theirs = theirs
        self.ours = ours
        self.msg_type = msg_type
        self.body = body


class MessageTooLarge(WireError):
    """A message we are building is over its type's size limit (protocol/wire/limits.py)."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(f"{name} of {format_size(size)} is over its limit of "
                         f"{format_size(limit)}")
        self.size = size
        self.limit = limit


class Refused(WireError):
    """The peer refused us; the reason is readable across protocol versions."""


T = TypeVar("T", bound="Message")
_REGISTRY: dict[int, type[Message]] = {}


class Message:
    """Base of every typed message: a frozen, slotted dataclass with a type code.

    Subclasses declare ``TYPE`` (a unique code), ``MAX_SIZE`` (the largest body
    accepted) and their fields; ``to_wire``/``from_wire`` are derived from the fields'
    annotations, which may be bool, int, float, str, bytes, ``Any`` (any msgpack
    value), ``list[X]``, ``dict[str, Any]``, another Message class (nested) or a class
    with its own ``to_wire``/``from_wire`` (the statistics types).
    """

    __slots__ = ()
    TYPE: ClassVar[int]
    MAX_SIZE: ClassVar[int] = CONTROL_MAX
    _fields: ClassVar[tuple[tuple[str, Any], ...]]
    _field_checkers: ClassVar[tuple[Callable[[Any], Any], ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("TYPE")
        if code is not None:
            known = _REGISTRY.get(code)
            # dataclass(slots=True) builds the class twice under one name
            if code == REFUSED_TYPE or (
                known is not None and known.__qualname__ != cls.__qualname__
            ):
                raise TypeError(f"message type {code} used twice")
            _REGISTRY[code] = cls

    @classmethod
    def _field_types(cls) -> tuple[tuple[str, Any], ...]:
        cached = cls.__dict__.get("_fields")
        if cached is None:
            hints = typing.get_type_hints(cls)
            cached = tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._fields = cached
        return cached

    def to_wire(self) -> list[Any]:
        return [_to_wire(getattr(self, name)) for name, _ in self._field_types()]

    @classmethod
    def _checkers(cls) -> tuple[Callable[[Any], Any], ...]:
        """One checker per field, built once per class (the stats channel decodes
        thousands of deltas a second)."""
        cached = cls.__dict__.get("_field_checkers")
        if cached is None:
            cached = tuple(_checker(tp, f"{cls.__name__}.{name}")
                           for name, tp in cls._field_types())
            cls._field_checkers = cached
        return cached

    @classmethod
    def from_wire(cls: type[T], obj: Any) -> T:
        checkers = cls._checkers()
        if not isinstance(obj, list) or len(obj) != len(checkers):
            raise WireError(f"{cls.__name__}: expected an array of {len(checkers)} fields")
        values = [check(v) for check, v in zip(checkers, obj, strict=True)]
        try:
            return cls(*values)
        except WireError:
            raise
        except (TypeError, ValueError) as e:  # a field's own check (__post_init__)
            raise WireError(f"{cls.__name__}: {e}") from None


def _to_wire(v: Any) -> Any:
    if isinstance(v, list):
        return [_to_wire(x) for x in v]
    to_wire = getattr(v, "to_wire", None)
    return to_wire() if to_wire is not None else v


_SCALARS = frozenset({int, str, bytes, bool})


def _exact(tp: type, v: Any, where: str) -> Any:
    if type(v) is not tp:  # bool is an int subclass: compare exact types
        raise WireError(f"{where}: expected {tp.__name__}, got {type(v).__name__}")
    return v


def _checker(tp: Any, where: str) -> Callable[[Any], Any]:
    """``_check`` for one field, with the common case of a scalar or a float inline."""
    if tp in _SCALARS:
        def exact(v: Any) -> Any:
            return v if type(v) is tp else _exact(tp, v, where)
        return exact
    if tp is float:
        def number(v: Any) -> Any:
            return v if type(v) is float and math.isfinite(v) else _check(tp, v, where)
        return number
    return lambda v: _check(tp, v, where)


def _check(tp: Any, v: Any, where: str) -> Any:
    if tp is Any:
        return v
    if tp is float:
        if type(v) in (float, int) and math.isfinite(float(v)):  # msgpack ints fit a float
            return float(v)
        raise WireError(f"{where}: expected a finite number, got {str(v)[:40]!r}")
    if tp in _SCALARS:
        return _exact(tp, v, where)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(v, list):
            raise WireError(f"{where}: expected an array, got {type(v).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(item, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise WireError(f"{where}: expected a map, got {type(v).__name__}")
        key_tp, value_tp = typing.get_args(tp)
        # strict_map_key still lets bytes keys through
        return {_check(key_tp, k, f"{where} key"): _check(value_tp, x, f"{where}.{k}")
                for k, x in v.items()}
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if v is None:
                    return None
                continue
            try:
                return _check(option, v, where)
            except WireError as e:
                errors.append(str(e))
        raise WireError(f"{where}: {'; '.join(errors) or 'expected nil'}")
    from_wire = getattr(tp, "from_wire", None)
    if from_wire is not None:
        try:
            return from_wire(v)
        except WireError:
            raise
        except ValueError as e:
            raise WireError(f"{where}: {e}") from None
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def pack(msg: Message) -> bytes:
    """The body of ``msg``; MessageTooLarge when it is over its type's MAX_SIZE."""
    body: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True)
    if len(body) > msg.MAX_SIZE:
        raise MessageTooLarge(type(msg).__name__, len(body), msg.MAX_SIZE)
    return body


def encode(msg: Message) -> list[bytes]:
    """``[header, body]`` frames of a control message."""
    return [HEADER.pack(MAGIC, PROTOCOL_VERSION, msg.TYPE), pack(msg)]


def encode_refused(reason: str) -> list[bytes]:
    return [HEADER.pack(MAGIC, PROTOCOL_VERSION, REFUSED_TYPE), msgpack.packb(reason[:2000])]


def read_header(header: bytes) -> tuple[int, int]:
    """(version, type) of a header frame, checking only its fixed layout."""
    if len(header) != HEADER.size:
        raise WireError(f"header of {len(header)} bytes, expected {HEADER.size}")
    magic, version, msg_type = HEADER.unpack(header)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}")
    return version, msg_type


def unpack_body(body: bytes, limit: int) -> Any:
    if len(body) > limit:
        raise WireError(f"body of {len(body)} bytes is over the limit of {limit}")
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            max_str_len=limit, max_bin_len=limit,
            max_array_len=limit, max_map_len=limit, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # every kind of bad input
        raise WireError(f"undecodable body: {type(e).__name__}: {e}") from None


def decode(frames: Sequence[bytes], limit: int | None = None) -> Message:
    """The message in ``[header, body]``; ``limit`` caps the body (else the type's MAX_SIZE)."""
    if len(frames) != 2:
        raise WireError(f"expected 2 frames, got {len(frames)}")
    header, body = frames
    version, msg_type = read_header(header)
    if msg_type == REFUSED_TYPE:
        reason = unpack_body(body, CONTROL_MAX)
        raise Refused(reason if isinstance(reason, str) else "refused (no reason given)")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(version, PROTOCOL_VERSION, msg_type, body)
    cls = _REGISTRY.get(msg_type)
    if cls is None:
        raise WireError(f"unknown message type {msg_type}")
    obj = unpack_body(body, min(limit, cls.MAX_SIZE) if limit is not None else cls.MAX_SIZE)
    return cls.from_wire(obj)


def expect(msg: Message, cls: type[T]) -> T:
    if not isinstance(msg, cls):
        raise WireError(f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg


def encode_stats(topic: bytes, msg: Message) -> list[bytes]:
    """``[topic, header, body]`` frames of a stats message."""
    return [topic, *encode(msg)]


def decode_stats(frames: Sequence[bytes], topic: bytes) -> Message:
    if len(frames) != 3:
        raise WireError(f"stats message of {len(frames)} frames, expected 3")
    if frames[0] != topic:
        raise WireError("stats message for another run")
    return decode(frames[1:])


def encode_joined(msg: Message) -> bytes:
    """Header and body in one buffer, for byte streams such as the agent-worker pipe."""
    header, body = encode(msg)
    return header + body


def decode_joined(data: bytes, limit: int | None = None) -> Message:
    return decode([data[: HEADER.size], data[HEADER.size :]], limit)
