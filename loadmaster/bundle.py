"""Collects what a job ships to agents: the client file, `files:`, data files named in custom keys.

Paths are kept relative to the master's current directory, so the client code finds its
data at the same relative path in the agent's run directory. Links are followed only
while they stay inside that directory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.bundle import BundleError, check_bundle_file, check_bundle_path
from protocol.wire.limits import format_size
from protocol.wire.messages import BundleFile


@dataclass
class Bundle:
    files: list[BundleFile] = field(default_factory=list)
    class_file: str = ""  # the client file's path inside the bundle
    warnings: list[str] = field(default_factory=list)  # files named but not shipped

    def describe(self, shown: int = 10) -> str:
        """The first ``shown`` files with their sizes, then how many more."""
        text = ", ".join(f"{f.path} ({len(f.data)} B)" for f in self.files[:shown])
        rest = self.files[shown:]
        if rest:
            text += f" and {len(rest)} more ({format_size(sum(len(f.data) for f in rest))})"
        return text


def _relative(path: Path, base: Path, what: str) -> str:
    """``path`` relative to ``base`` as a checked bundle path; links may not leave ``base``."""
    absolute = path if path.is_absolute() else base / path
    real = absolute.resolve()
    if not real.is_relative_to(base):
        if absolute.is_symlink() or any(p.is_symlink() for p in absolute.parents):
            raise BundleError(f"{what} {str(path)!r}: a link that leaves {base} is refused")
        raise BundleError(f"{what} {str(path)!r}: outside {base}; only files under the "
                          f"current directory can be shipped with their relative path")
    rel = os.path.relpath(absolute, base) if absolute.is_relative_to(base) \
        else os.path.relpath(real, base)
    return str(check_bundle_path(Path(rel).as_posix()))


class BundleBuilder:
    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self._bundle = Bundle()
        self._seen: set[str] = set()

    def add_file(self, path: Path, what: str) -> str:
        rel = _relative(path, self.base, what)
        if rel in self._seen:
            return rel
        real = (self.base / rel).resolve()
        if not real.is_file():
            raise BundleError(f"{what} {str(path)!r}: not a regular file")
        self.add_bytes(rel, real.read_bytes(), stat.S_IMODE(real.stat().st_mode))
        return rel

    def add_bytes(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        check_bundle_file(rel, mode)  # what agents will check
        self._seen.add(rel)
        self._bundle.files.append(BundleFile(path=rel, mode=mode, data=data))

    def add_tree(self, path: Path, what: str) -> None:
        absolute = path if path.is_absolute() else self.base / path
        if absolute.is_dir() and not absolute.is_symlink():
            prefix = _relative(path, self.base, what)  # the folder itself must be inside
            self._add_folder(str(absolute), prefix, what)
        elif absolute.exists() or absolute.is_symlink():
            self.add_file(path, what)
        else:
            raise BundleError(f"{what} {str(path)!r}: no such file or folder")

    def _add_folder(self, folder: str, prefix: str, what: str) -> None:
        """Everything under ``folder`` (a real folder inside the base), in name order.

        A regular file met here is inside the base by construction, so only links pay
        for resolving their path; a folder of 200,000 files takes seconds, not minutes.
        """
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{prefix}/{entry.name}"
            if entry.is_symlink():
                if entry.is_dir():
                    _relative(Path(entry.path), self.base, what)  # refuse links that leave
                else:
                    self.add_file(Path(entry.path), what)
            elif entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    self._add_folder(entry.path, rel, what)
            elif entry.is_file(follow_symlinks=False):
                if rel not in self._seen:  # a name under a checked folder: add_bytes checks
                    with open(entry.path, "rb") as f:
                        data = f.read()
                    self.add_bytes(rel, data, stat.S_IMODE(entry.stat().st_mode))
            else:
                raise BundleError(f"{what} {entry.path!r}: not a regular file")

    def build(self) -> Bundle:
        return self._bundle


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, say: not a file
        return False


def _custom_file(base: Path, key: str, value: str, remote: bool) -> Path | str | None:
    """What to do with a custom value: the file to ship (a Path), why a file it names
    will not reach the workers (a str), or None (not a file, or fine where it is)."""
    if os.path.isabs(value):
        if not remote or not _is_file(Path(value)):
            return None  # the embedded agent runs here: an absolute path works as it is
        return (f"custom key {key!r}: {value} is an absolute path, so it is not shipped; "
                f"each agent must have its own copy at that path")
    candidate = base / value
    if not _is_file(candidate):
        return None
    if candidate.resolve().is_relative_to(base):
        return Path(value)
    return (f"custom key {key!r}: {value} is outside the current folder {base} (or links "
            f"out of it), so it is not shipped; global_init will look for it at {value} "
            f"relative to each agent's run directory, where it is missing. Move it under "
            f"{base}")


def build_bundle(base: Path, class_file: Path, files: list[str],
                 custom: dict[str, Any], remote: bool = False) -> Bundle:
    """The job's bundle. A client file outside ``base`` is shipped under its own name.

    ``remote``: the agents may run on other hosts (an absolute path is then not enough).
    """
    builder = BundleBuilder(base)
    try:
        class_rel = builder.add_file(class_file, "benchmark_class_file")
    except BundleError:
        if class_file.is_symlink() and not class_file.resolve().is_relative_to(builder.base):
            raise
        class_rel = str(check_bundle_path(class_file.name))
        builder.add_bytes(class_rel, class_file.read_bytes())
    for entry in files:
        builder.add_tree(Path(entry), "files:")
    warnings = []
    for key, value in custom.items():
        # the seed's `test_data_file: ./data/data2.json`: relative paths to existing files
        if not isinstance(value, str) or not value or len(value) >= 4096 or "\n" in value:
            continue
        found = _custom_file(builder.base, key, value, remote)
        if isinstance(found, Path):
            builder.add_file(found, f"custom key {key!r}:")
        elif found is not None:
            warnings.append(found)
    bundle = builder.build()
    bundle.class_file = class_rel
    bundle.warnings = warnings
    return bundle
