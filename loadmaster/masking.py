"""Secrets hidden from what the master shows or writes of the config (the result file,
later the dashboard): one rule, in one place.

A value is replaced by ``MASK`` when its key contains one of ``SECRET_WORDS`` (any
case: ``api_token``, ``DB_PASSWORD``, ``signing_key``), or is one of the extra keys the
user named (``--mask KEY``, compared without regard to case). Keys are matched at every
depth, in mappings nested in mappings and lists, so ``auth: {password: ...}`` is hidden
too; a masked value is replaced whole, whatever it holds. The system keys contain none of
the words, so only ``--mask`` hides one of them (``--mask host``).

Whatever its key, a string that holds a URL with a password (``https://user:pw@host``,
``postgres://u:p@db``) keeps its user and host and loses the password, and a bearer
token after ``Bearer `` is hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "SECRET_WORDS", "is_secret", "mask_text", "masked"]

MASK = "***"
SECRET_WORDS = ("token", "secret", "password", "passwd", "pwd", "key", "auth", "credential",
                "cookie", "private")
# Bounded repeats: a scheme is short, and so is a URL's user and password; unbounded
# ones make a long string without "://" or "@" (a 2 MiB custom value) take quadratic time.
_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]{0,31}://[^/@:\s]{0,256}):[^/@\s]{0,256}@")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def is_secret(key: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether the value under ``key`` is hidden; ``extra``: names in lower case."""
    low = key.lower()
    return low in extra or any(word in low for word in SECRET_WORDS)


def masked(config: Mapping[str, Any], extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of ``config`` with every secret value replaced by ``MASK`` (at any depth);
    ``config`` itself is left as it is."""
    extra = frozenset(k.lower() for k in extra_keys)
    return {k: _hide(k, v, extra) for k, v in config.items()}


def _hide(key: Any, value: Any, extra: frozenset[str]) -> Any:
    if isinstance(key, str) and is_secret(key, extra):
        return MASK
    return _walk(value, extra)


def mask_text(text: str) -> str:
    """``text`` without the password of any URL in it, or a bearer token."""
    if "://" in text:
        text = _USERINFO.sub(rf"\g<1>:{MASK}@", text)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _walk(value: Any, extra: frozenset[str]) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: _hide(k, v, extra) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, extra) for v in value]
    return value
