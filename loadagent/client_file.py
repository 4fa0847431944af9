"""Imports the user's client file and picks the ClientProtocol subclass to run."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path, PurePosixPath
from typing import Any

from protocol.client import ClientProtocol


class ClientLoadError(Exception):
    """The client file cannot be used; the message says why (and may hold a traceback)."""


def inside(run_dir: Path, class_file: str) -> Path:
    """The client file ``class_file`` of a job, which must be a file of its bundle: a
    relative path that stays inside ``run_dir`` (links resolved). Anything else is
    refused (ClientLoadError) before a line of it runs: a master must not make an agent
    import a file that was already on its disk."""
    rel = PurePosixPath(class_file)
    if rel.is_absolute() or ".." in rel.parts or not class_file.strip():
        raise ClientLoadError(f"class_file {class_file[:200]!r} is not a path inside the "
                              f"job's bundle: refused")
    root = run_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ClientLoadError(f"class_file {class_file[:200]!r} is not a file of the job's "
                              f"bundle: refused")
    return path


def load_client_class(path: Path, class_name: str = "") -> type[ClientProtocol]:
    """Import ``path`` as a module and return the ClientProtocol subclass it defines.

    With ``class_name`` empty the file must define exactly one subclass.
    Import errors propagate with their own traceback.
    """
    return _pick(path, _subclasses(path), class_name)


def load_client_classes(path: Path, class_names: list[str]) -> list[type[ClientProtocol]]:
    """``load_client_class`` for each of several names (a weighted mix), imported once;
    their rows' names (``name``, or the class name) must differ."""
    found = _subclasses(path)
    classes = [_pick(path, found, name) for name in class_names]
    rows: dict[str, str] = {}
    for cls in classes:
        row = cls.name or cls.__name__
        if row in rows:
            raise ClientLoadError(
                f"{path}: benchmark_class: {rows[row]} and {cls.__name__} both count their "
                f"calls as {row!r} (their `name`); give each its own")
        rows[row] = cls.__name__
    return classes


def _subclasses(path: Path) -> list[type[ClientProtocol]]:
    """Import ``path`` as a module: the ClientProtocol subclasses it defines."""
    module_name = path.stem if path.stem.isidentifier() else "benchmark_client"
    if module_name in sys.modules:  # never replace a loaded module (a client named json.py)
        module_name = f"benchmark_client_{module_name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ClientLoadError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    found = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, ClientProtocol) and obj is not ClientProtocol
        and obj.__module__ == module_name
    ]
    return found


def _pick(path: Path, found: list[type[ClientProtocol]],
          class_name: str) -> type[ClientProtocol]:
    if class_name:
        for cls in found:
            if cls.__name__ == class_name:
                return cls
        names = ", ".join(c.__name__ for c in found) or "none"
        raise ClientLoadError(
            f"{path}: benchmark_class {class_name!r} is not a ClientProtocol subclass "
            f"defined there (found: {names})")
    if not found:
        raise ClientLoadError(
            f"{path}: defines no ClientProtocol subclass (write `from protocol import "
            f"ClientProtocol` and subclass it)")
    if len(found) > 1:
        names = ", ".join(c.__name__ for c in found)
        raise ClientLoadError(
            f"{path}: defines several ClientProtocol subclasses ({names}); "
            f"choose one with benchmark_class")
    return found[0]


async def run_global_init(cls: type[ClientProtocol], custom_conf: dict[str, Any]) -> None:
    """``cls.global_init(custom_conf)``, awaited when it is a coroutine function."""
    result = cls.global_init(custom_conf)
    if inspect.isawaitable(result):
        await result


def describe_failure(exc: BaseException, run_dir: str) -> str:
    """What the user reads when their client fails before load.

    A ClientLoadError is one line. Anything else is the traceback from the user's own
    first frame on (the loader's and importlib's frames cut), with paths relative to the
    run directory, as they are on the master.
    """
    prefix = os.path.join(run_dir, "")
    if isinstance(exc, ClientLoadError):
        text = str(exc)
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        first = next((i for i, f in enumerate(frames) if f.filename.startswith(prefix)), None)
        lines = traceback.format_exception_only(exc)
        if first is not None:
            lines = ["Traceback (most recent call last):\n",
                     *traceback.format_list(frames[first:]), *lines]
        text = "".join(lines)
    return text.replace(prefix, "")
