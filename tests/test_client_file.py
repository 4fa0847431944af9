"""Importing the user's client file and picking the class, as a worker does."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from loadagent.client_file import ClientLoadError, load_client_class, run_global_init

TWO = '''
from protocol import ClientProtocol

class Base(ClientProtocol):
    async def execute(self):
        return None

class Other(Base):
    pass
'''


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_one_subclass_is_picked(tmp_path: Path) -> None:
    path = write(tmp_path, "one.py", TWO.split("class Other")[0])
    assert load_client_class(path).__name__ == "Base"


def test_several_subclasses_need_benchmark_class(tmp_path: Path) -> None:
    path = write(tmp_path, "two.py", TWO)
    with pytest.raises(ClientLoadError, match=r"several ClientProtocol subclasses \(Base, Other\)"
                                              r".*benchmark_class"):
        load_client_class(path)
    assert load_client_class(path, "Other").__name__ == "Other"
    with pytest.raises(ClientLoadError, match="'Nope' is not a ClientProtocol subclass"):
        load_client_class(path, "Nope")


def test_a_file_without_a_subclass_says_how_to_write_one(tmp_path: Path) -> None:
    path = write(tmp_path, "none.py", "from protocol import ClientProtocol\nx = 1\n")
    with pytest.raises(ClientLoadError, match="from protocol import ClientProtocol"):
        load_client_class(path)


def test_imported_subclasses_do_not_count(tmp_path: Path) -> None:
    write(tmp_path, "shared_base.py", TWO)
    path = write(tmp_path, "mine.py", "from shared_base import Base\n"
                                      "class Mine(Base):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_client_class(path).__name__ == "Mine"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("shared_base", None)


def test_a_client_named_like_a_loaded_module_does_not_replace_it(tmp_path: Path) -> None:
    path = write(tmp_path, "json.py", TWO.split("class Other")[0])
    cls = load_client_class(path)
    assert sys.modules["json"] is json
    assert cls.__module__ != "json"


def test_async_and_sync_global_init_both_run(tmp_path: Path) -> None:
    path = write(tmp_path, "inits.py", '''
from protocol import ClientProtocol
seen = []

class A(ClientProtocol):
    @staticmethod
    async def global_init(custom_conf=None):
        seen.append(("async", custom_conf))

class S(ClientProtocol):
    @staticmethod
    def global_init(custom_conf=None):
        seen.append(("sync", custom_conf))
''')
    a = load_client_class(path, "A")
    asyncio.run(run_global_init(a, {"k": 1}))
    assert sys.modules[a.__module__].seen == [("async", {"k": 1})]
    s = load_client_class(path, "S")  # a second import, under another module name
    asyncio.run(run_global_init(s, {"k": 2}))
    assert sys.modules[s.__module__].seen == [("sync", {"k": 2})]
