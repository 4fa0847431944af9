"""The rules of a job's bundle, one owner for both sides.

The master builds a bundle from its disk (``loadmaster.bundle``) and every agent writes
it into a fresh run directory (``loadagent.rundir``); both check each entry here, so
what the master ships is exactly what an agent accepts.
"""

from __future__ import annotations

import stat
from pathlib import PurePosixPath

__all__ = [
    "RESERVED_TOP_LEVEL",
    "BundleError",
    "check_bundle_file",
    "check_bundle_path",
]


RESERVED_TOP_LEVEL = ("protocol", "protocol.py")


class BundleError(ValueError):
    """A bundle entry that must not be shipped or written; the message names it."""


def check_bundle_path(path: str) -> PurePosixPath:
    """``path`` as a safe relative POSIX path, or BundleError saying what is wrong."""
    if not path or "\x00" in path or "\\" in path:
        raise BundleError(f"bundle path {path!r}: empty or holds a NUL or backslash")
    p = PurePosixPath(path)
    if p.is_absolute():
        raise BundleError(f"bundle path {path!r}: absolute paths are refused")
    if any(part == ".." for part in p.parts):
        raise BundleError(f"bundle path {path!r}: '..' is refused")
    parts = [part for part in p.parts if part != "."]
    if not parts:
        raise BundleError(f"bundle path {path!r}: names no file")
    if parts[0] in RESERVED_TOP_LEVEL:
        raise BundleError(
            f"bundle path {path!r}: a top-level {parts[0]} would shadow the project's "
            f"`protocol` package; rename it")
    return PurePosixPath(*parts)


def check_bundle_file(path: str, mode: int) -> PurePosixPath:
    """A bundle entry: a checked path, and a mode that is a regular file's (or bare
    permission bits)."""
    rel = check_bundle_path(path)
    if not 0 <= mode <= 0o177777 or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise BundleError(f"bundle path {path!r}: only regular files are accepted")
    return rel
