"""A fresh run directory per job, holding the shipped bundle; removed after the run."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from protocol.bundle import BundleError, check_bundle_file
from protocol.wire.messages import BundleFile


def write_bundle(files: list[BundleFile], root: Path) -> None:
    """Write every file under ``root``, keeping relative paths.

    Refuses absolute paths, ``..``, and anything that is not a regular file; files are
    created with O_NOFOLLOW | O_EXCL, so no link can redirect a write outside ``root``.
    Each folder is made and checked once (a bundle of 200,000 files in 200 folders makes
    200 checks, not 200,000): a folder checked here stays a real folder, since nothing
    the bundle writes can replace it.
    """
    root = root.resolve()
    checked: dict[PurePosixPath, Path] = {}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for f in files:
        rel = check_bundle_file(f.path, f.mode)
        parent = checked.get(rel.parent)
        if parent is None:
            parent = _make_folders(root, rel, f.path)
            if parent.resolve() != parent or not parent.is_relative_to(root):
                raise BundleError(f"bundle path {f.path!r}: leaves the run directory")
            checked[rel.parent] = parent
        try:
            fd = os.open(parent / rel.name, flags, (f.mode & 0o755) | 0o600)
        except FileExistsError:
            raise BundleError(f"bundle path {f.path!r}: already in the bundle, as a file or "
                              f"a folder") from None
        except OSError as e:
            raise BundleError(f"bundle path {f.path!r}: cannot be written: {e}") from None
        try:
            view = memoryview(f.data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _make_folders(root: Path, rel: PurePosixPath, shown: str) -> Path:
    """Create the folders of ``rel`` under ``root`` one at a time, never through a link."""
    folder = root
    for part in rel.parts[:-1]:
        folder = folder / part
        try:
            folder.mkdir()
        except FileExistsError:
            if folder.is_symlink() or not folder.is_dir():
                raise BundleError(f"bundle path {shown!r}: {part!r} is already a file or a "
                                  f"link in the run directory") from None
        except OSError as e:
            raise BundleError(f"bundle path {shown!r}: cannot be written: {e}") from None
    return folder


PREFIX = "loadagent-"


class RunDir:
    """A temporary directory for one run (mode 0700, a random name); ``remove()`` is
    safe to call twice.

    Its name carries the agent's pid, so a later agent can tell the directory of one
    that was killed before it could clean up (``sweep_stale_rundirs``), but not the run
    id, which would let any local user aim a forged delta at the run.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def sweep_stale_rundirs(parent: Path | None = None) -> list[Path]:
    """Remove run directories whose agent process no longer exists; returns them."""
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its agent still runs (or the pid is reused: leave it alone)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
