"""`loadmaster run -f conf.yml --once`: one client, one call, in this process, with what it
got printed: the way to debug a client before a load test.

The config is loaded and checked as for a run, and the job's bundle built and written to
a fresh run directory, as the embedded agent does; that directory becomes the current
one and the first entry of ``sys.path``, and the agent's own loader imports the client
file from it. So a file the config forgot to ship is missing here too. Then, on uvloop:
``global_init(custom_conf)``, and for each class ``init_before_use(host)``, one timed
``execute()`` and ``shutdown()``. No socket and no other process: a ``breakpoint()`` in
the client stops here. The load's shape (users, arrival_rate, run_time, agents...) is
not used.

This is the one place where ``loadmaster`` imports ``loadagent``: the loader and the
run directory must be the agent's, or this would debug something else.
"""

from __future__ import annotations

import asyncio
import bdb
import contextlib
import inspect
import os
import sys
import time
import traceback
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO

import msgpack
import uvloop

from loadagent.client_file import (
    ClientLoadError,
    inside,
    load_client_class,
    load_client_classes,
    run_global_init,
)
from loadagent.rundir import RunDir, write_bundle
from loadmaster.bundle import build_bundle
from loadmaster.config import Config, load_config
from protocol.calls import call_names, current_op, current_totals
from protocol.client import ClientProtocol
from protocol.http import HttpClient, HttpResponse
from protocol.stats import Totals

__all__ = ["ClientFailed", "class_names", "run_once"]

RESULT_SHOWN = 300  # characters of execute()'s repr
RESPONSES_SHOWN = 3  # the last responses of the built-in client
HEADERS_SHOWN = 8
BODY_SHOWN = 300  # bytes of a response body


class ClientFailed(Exception):
    """The client failed (import, global_init, init_before_use, execute); the details
    are printed already, the message says in one line what failed."""


def class_names(cfg: Config) -> list[str]:
    """The classes to run, one call each, in order: ``benchmark_class``'s one, or a mix's
    (``{Browse: 3, Buy: 1}``: weights do not matter here); ``[""]``: the file's one
    subclass."""
    if isinstance(cfg.benchmark_class, dict):
        return list(cfg.benchmark_class)
    return [cfg.benchmark_class]


def run_once(conf: Path, overrides: dict[str, Any], out: TextIO, err: TextIO) -> None:
    """Load ``conf`` as a run does, then one call of each class; print what happened to
    ``out``, tracebacks and warnings to ``err``.

    Raises ValueError (ConfigError, BundleError) for a config a run would refuse, and
    ClientFailed when the client failed; returns when every call succeeded."""
    cfg = load_config(conf, overrides)
    for warning in cfg.warnings:
        print(f"loadmaster: warning: {warning}", file=err)
    if cfg.agents > 0:
        print(f"loadmaster: note: --once runs the call here, in this process; the config's "
              f"agents: {cfg.agents} is not used", file=err)
    bundle = build_bundle(Path.cwd(), cfg.benchmark_class_file, cfg.files, cfg.custom)
    for warning in bundle.warnings:
        print(f"loadmaster: warning: {conf}: {warning}", file=err)
    run_dir = RunDir()
    cwd, path = os.getcwd(), list(sys.path)
    try:
        write_bundle(bundle.files, run_dir.path)
        root = run_dir.path.resolve()
        # where a worker runs its client (loadagent/worker.py: Worker._prepare)
        os.chdir(root)
        sys.path.insert(0, str(root))
        once = _Once(root, cfg.host, out, err)
        classes = once.load(inside(root, bundle.class_file), class_names(cfg))
        call_names.update(cls.name or cls.__name__ for cls in classes)  # as a worker
        print(f"--once: {bundle.class_file}: {', '.join(c.__name__ for c in classes)}, "
              f"host {cfg.host}; {len(bundle.files)} file(s) shipped to a temporary run "
              f"directory", file=out, flush=True)
        failed = uvloop.run(once.session(classes, _custom_conf(cfg.custom)))
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        run_dir.remove()
    if failed:
        raise ClientFailed("; ".join(failed))


def _custom_conf(custom: dict[str, Any]) -> dict[str, Any]:
    """``custom_conf`` as a worker decodes it from the job (protocol/wire/codec.py)."""
    data = msgpack.packb(custom, use_bin_type=True)
    conf: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=True,
                                           use_list=True)
    return conf


class _Once:
    def __init__(self, root: Path, host: str, out: TextIO, err: TextIO) -> None:
        self._root = root
        self._prefix = os.path.join(str(root), "")
        self._host = host
        self._out = out
        self._err = err

    def load(self, path: Path, names: list[str]) -> list[type[ClientProtocol]]:
        """Import the client file once, with the agent's loader, and pick the classes."""
        try:
            if len(names) > 1:
                return load_client_classes(path, names)
            return [load_client_class(path, names[0])]
        except ClientLoadError as e:
            raise ClientFailed(self._relative(str(e))) from None
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # SystemExit at import is a failure too, as on a worker
            what = f"{path.relative_to(self._root)}: importing the client file"
            if isinstance(e, bdb.BdbQuit):
                raise ClientFailed(f"{what} stopped in the debugger") from None
            self._traceback(e)
            raise ClientFailed(f"{what} raised {type(e).__name__}") from None

    async def session(self, classes: list[type[ClientProtocol]],
                      custom_conf: dict[str, Any]) -> list[str]:
        """global_init of every class (as a worker, before any client), then one call of
        each; what failed, one line each."""
        for cls in classes:
            began = time.perf_counter_ns()
            try:
                await run_global_init(cls, custom_conf)
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise
            except BaseException as e:
                return [self._failed(cls, "global_init()", e)]
            self._say(f"{cls.__name__}: global_init() {_ms(time.perf_counter_ns() - began)}")
        failed = []
        for cls in classes:
            failure = await self._one_call(cls)
            if failure is not None:
                failed.append(failure)
        return failed

    async def _one_call(self, cls: type[ClientProtocol]) -> str | None:
        """init_before_use, the call, shutdown (if init returned); what failed, if any."""
        label, row = cls.__name__, cls.name or cls.__name__
        began = time.perf_counter_ns()
        try:
            client = cls()
            r = client.init_before_use(self._host)
            if inspect.isawaitable(r):
                await r
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise
        except BaseException as e:  # no shutdown() for it, as in a run
            return self._failed(cls, f"init_before_use({self._host!r})", e)
        self._say(f"{label}: init_before_use({self._host!r}) "
                  f"{_ms(time.perf_counter_ns() - began)}")
        try:
            return await self._call(client, label, row)
        finally:
            began = time.perf_counter_ns()
            try:
                await _maybe_await(client.shutdown())
                self._say(f"{label}: shutdown() {_ms(time.perf_counter_ns() - began)}")
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise
            except BaseException as e:  # in a run: an error of ROW.shutdown, not a failure
                self._traceback(e)
                self._say(f"{label}: shutdown() raised {type(e).__name__} (traceback on "
                          f"stderr); a run counts it in the error table as {row}.shutdown, "
                          f"not as a failed call")

    async def _call(self, client: ClientProtocol, label: str, row: str) -> str | None:
        """The timed execute(), counted under ``row`` as a worker counts it, and shown."""
        totals = Totals()
        st = totals.op(row)
        seen: list[HttpResponse] = []
        error: BaseException | None = None
        result: Any = None
        with _counted_into(totals, row), _responses_kept(seen):
            began = time.perf_counter_ns()
            try:
                result = await client.execute()
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise
            except BaseException as e:
                error = e
            elapsed = time.perf_counter_ns() - began
        if error is None and result is not False:
            st.record_ok(elapsed)
        else:
            st.fail += 1
        failure = None
        if isinstance(error, bdb.BdbQuit):
            failure = f"{label}: execute() stopped in the debugger"
            self._say(f"{failure} after {_ms(elapsed)}")
        elif error is not None:
            self._traceback(error)
            failure = f"{label}: execute() raised {type(error).__name__}"
            self._say(f"{failure} after {_ms(elapsed)} (traceback on stderr): a failure")
        elif result is False:
            failure = f"{label}: execute() returned False"
            self._say(f"{label}: execute() took {_ms(elapsed)} and returned False: it counts "
                      f"as a failure")
        else:
            self._say(f"{label}: execute() took {_ms(elapsed)} and returned "
                      f"{_short(result, RESULT_SHOWN)}: a success")
        for line in [*_response_lines(seen), *_row_lines(totals)]:
            self._say(line)
        return failure

    def _failed(self, cls: type[ClientProtocol], what: str, e: BaseException) -> str:
        if isinstance(e, bdb.BdbQuit):
            return f"{cls.__name__}: {what} stopped in the debugger"
        self._traceback(e)
        failure = f"{cls.__name__}: {what} raised {type(e).__name__}"
        self._say(f"{failure} (traceback on stderr)")
        return failure

    def _say(self, line: str) -> None:
        print(self._relative(line), file=self._out, flush=True)

    def _traceback(self, e: BaseException) -> None:
        """The user's traceback on ``err``: from their own first frame on, when there is
        one (ours and importlib's cut), with paths relative to the run directory, as they
        are on the master; the exceptions it chains to in full."""
        tb = e.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(self._prefix):
            tb = tb.tb_next
        if tb is not None:
            text = traceback.format_exception(e.with_traceback(tb))
        elif isinstance(e, SyntaxError):  # the file, line and caret say it all
            text = traceback.format_exception_only(e)
        else:  # raised outside the client file (the base class's execute, say): all of it
            text = traceback.format_exception(e)
        self._out.flush()
        print(self._relative("".join(text)), file=self._err, end="", flush=True)

    def _relative(self, text: str) -> str:
        return text.replace(self._prefix, "")


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


@contextlib.contextmanager
def _counted_into(totals: Totals, name: str) -> Iterator[None]:
    """What a worker sets for a client's calls (loadagent/scheduler.py): the built-in HTTP
    client's statuses and bytes, and named steps, are counted into ``totals``."""
    op, tot = current_op.set(totals.op(name)), current_totals.set(totals)
    try:
        yield
    finally:
        current_totals.reset(tot)
        current_op.reset(op)


@contextlib.contextmanager
def _responses_kept(seen: list[HttpResponse]) -> Iterator[None]:
    """Every response the built-in client returns meanwhile, appended to ``seen``.

    ``HttpClient.request`` (every method goes through it) is wrapped for that time: the
    client keeps no responses, and this process makes its one call and exits."""
    request = HttpClient.request

    async def keeping(self: HttpClient, *args: Any, **kwargs: Any) -> HttpResponse:
        response = await request(self, *args, **kwargs)
        seen.append(response)
        return response

    HttpClient.request = keeping  # type: ignore[method-assign]
    try:
        yield
    finally:
        HttpClient.request = request  # type: ignore[method-assign]


def _response_lines(seen: list[HttpResponse]) -> list[str]:
    """The last responses: status line, first headers, start of the body."""
    lines = []
    if len(seen) > RESPONSES_SHOWN:
        lines.append(f"responses: the last {RESPONSES_SHOWN} of {len(seen)}")
    for r in seen[-RESPONSES_SHOWN:]:
        try:
            phrase = f" {HTTPStatus(r.status).phrase}"
        except ValueError:
            phrase = ""
        lines.append(f"response: {r.method} {r.url} -> {r.status}{phrase}, "
                     f"{len(r.body)} bytes")
        lines += [f"  {k.decode('latin-1')}: {v.decode('latin-1')}"
                  for k, v in r.headers[:HEADERS_SHOWN]]
        if len(r.headers) > HEADERS_SHOWN:
            lines.append(f"  ... {len(r.headers) - HEADERS_SHOWN} more header(s)")
        if r.body:
            cut = "" if len(r.body) <= BODY_SHOWN else f" (the first {BODY_SHOWN} bytes)"
            lines.append(f"  body{cut}: "
                         f"{r.body[:BODY_SHOWN].decode('utf-8', 'replace')!r}")
    return lines


def _row_lines(totals: Totals) -> list[str]:
    """Every name's row: the call's own, and any its steps or built-in client counted."""
    width = max(len("name"), *(len(name) for name in totals.ops))
    lines = [f"  {'name':<{width}}  {'ok':>3}  {'fail':>4}  {'time (mean)':>11}  http"]
    for name, st in totals.ops.items():
        mean = _ms(st.sum_ns // st.ok) if st.ok else "-"
        http = ", ".join(f"{code}: {n}" for code, n in sorted(st.statuses.items()))
        if st.sent or st.received:
            http += f" ({st.sent} B sent, {st.received} B received)"
        lines.append(f"  {name:<{width}}  {st.ok:>3}  {st.fail:>4}  {mean:>11}  {http}"
                     .rstrip())
    lines += [f"  error: {name}: {kind}: {text} (x{count})"
              for (name, kind, text), count in totals.errors.items()]
    return ["rows:", *lines]


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms"


def _short(value: Any, limit: int) -> str:
    """repr() cut to ``limit`` characters."""
    try:
        text = repr(value)
    except Exception as e:  # a user's __repr__ that raises
        return f"<{type(value).__name__}: repr() raised {type(e).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
