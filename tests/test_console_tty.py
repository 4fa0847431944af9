"""The printer on a real pseudo-terminal: what a user sees, rendered by a tiny terminal.

The children write to the slave side of a pty with a set window size; the test reads the
master side and replays the bytes on ``Screen``, which keeps the scrollback, so a check can
say what the whole terminal shows at the end (or at any point of the stream).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.e2e_helpers import Target, master_cmd, tagged_env, write_job

ROWS, COLS = 40, 120
CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
SGR = re.compile(r"\x1b\[[0-9;]*m")


class Screen:
    """The few escapes rich and the old printer emit, on a ``rows`` x ``cols`` screen.

    Lines are kept after they scroll off the top (the scrollback), as a terminal does; the
    cursor cannot move above the screen's top row. Character width is taken as one cell.
    """

    def __init__(self, rows: int = ROWS, cols: int = COLS) -> None:
        self.rows, self.cols = rows, cols
        self.lines: list[list[str]] = [[] for _ in range(rows)]
        self.top = 0  # index in ``lines`` of the screen's first row
        self.row, self.col = 0, 0  # the cursor, ``row`` an index in ``lines``
        self.pending = False  # a character was written in the last column: wrap on the next
        self.cursor_visible = True

    def feed(self, data: str | bytes) -> Screen:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = OSC.sub("", text)
        i = 0
        while i < len(text):
            m = CSI.match(text, i)
            if m:
                self._csi(m.group(1), m.group(2))
                i = m.end()
                continue
            ch = text[i]
            i += 1
            if ch == "\r":
                self.col, self.pending = 0, False
            elif ch == "\n":  # the pty's onlcr, and a StringIO "terminal", return too
                self._line_feed()
                self.col = 0
            elif ch == "\b":
                self.col, self.pending = max(0, self.col - 1), False
            elif ch >= " " and ch != "\x7f":
                self._put(ch)
            # other controls (BEL, a stray ESC) show nothing
        return self

    def _line_feed(self) -> None:
        self.pending = False
        self.row += 1
        if self.row >= self.top + self.rows:
            self.lines.append([])
            self.top += 1

    def _put(self, ch: str) -> None:
        if self.pending:
            self._line_feed()
            self.col = 0
        line = self.lines[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = ch
        if self.col == self.cols - 1:
            self.pending = True
        else:
            self.col += 1

    def _csi(self, params: str, final: str) -> None:
        if params.startswith("?"):
            if params == "?25":
                self.cursor_visible = final == "h"
            return
        args = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = max(1, args[0]) if args else 1
        self.pending = False
        if final in "AF":  # up (F: and to the first column)
            self.row = max(self.top, self.row - n)
            if final == "F":
                self.col = 0
        elif final in "BE":
            self.row = min(self.top + self.rows - 1, self.row + n)
            if final == "E":
                self.col = 0
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = min(self.cols, n) - 1
        elif final == "H":
            row, col = [*args, 1, 1][:2]
            self.row = self.top + min(self.rows, max(1, row)) - 1
            self.col = min(self.cols, max(1, col)) - 1
        elif final == "K":
            mode = args[0] if args else 0
            line = self.lines[self.row]
            if mode == 0:
                del line[self.col:]
            elif mode == 1:
                line[:self.col + 1] = " " * min(len(line), self.col + 1)
            else:
                line.clear()
        elif final == "J":
            mode = args[0] if args else 0
            if mode == 0:
                del self.lines[self.row][self.col:]
                for r in range(self.row + 1, self.top + self.rows):
                    self.lines[r].clear()
            elif mode == 2:
                for r in range(self.top, self.top + self.rows):
                    self.lines[r].clear()
        # m (colours) and the rest change nothing that shows as text

    def history(self) -> list[str]:
        """Every line, scrollback and screen, right-trimmed; trailing empty lines dropped."""
        out = ["".join(line).rstrip() for line in self.lines]
        while out and not out[-1]:
            out.pop()
        return out

    def visible(self) -> list[str]:
        """The screen's rows, right-trimmed."""
        return ["".join(line).rstrip() for line in self.lines[self.top:self.top + self.rows]]


def test_the_screen_interpreter_on_the_escapes_it_knows() -> None:
    s = Screen(rows=3, cols=5).feed("abcdefg\r\nxy\x1b[1A\r\x1b[2Kz\nw\x1b[1F\x1b[J")
    assert s.history() == ["abcde"]  # "fg" wrapped, was replaced by "z", then all erased
    s = Screen(rows=2, cols=10).feed("1\n2\n3\n4\x1b[5A\x1b[2Kx")
    assert s.history() == ["1", "2", " x", "4"]  # the cursor stops at the screen's top


# -- running a child on a pty -----------------------------------------------------------------


def pty_env(tag: str, **extra: str) -> dict[str, str]:
    env = tagged_env(tag, **{"TERM": "xterm-256color", **extra})
    for name in ("COLUMNS", "LINES", "NO_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE",
                 "FORCE_COLOR"):
        if name not in extra:
            env.pop(name, None)
    return env


def run_on_pty(cmd: list[str], env: dict[str, str], cwd: Path | None = None,
               rows: int = ROWS, cols: int = COLS, timeout: float = 60.0,
               separate_stderr: bool = False) -> tuple[int, bytes, str]:
    """Run ``cmd`` with a pty as stdout (and stderr, unless separate); its exit code, the
    bytes the terminal received and, when separate, stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=subprocess.PIPE if separate_stderr else slave,
                                env=env, cwd=cwd)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    err: list[bytes] = []
    reader = None
    if proc.stderr is not None:  # read aside, so a full pipe cannot block the child
        stream = proc.stderr
        reader = threading.Thread(target=lambda: err.append(stream.read()), daemon=True)
        reader.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{cmd} did not end within {timeout}s; got:\n"
                                     + b"".join(chunks).decode("utf-8", "replace"))
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                if proc.poll() is not None:
                    break  # ended, and nothing more came (a grandchild may hold the slave)
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the slave closed it
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        if reader is not None:
            reader.join(10)
        return code, b"".join(chunks), b"".join(err).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def run_child(tmp_path: Path, tag: str, body: str, rows: int = ROWS, cols: int = COLS,
              **env: str) -> tuple[int, str]:
    """A Python child driving ``BlockPrinter(sys.stdout)`` as run.py does; its exit code and
    what the terminal received (as text)."""
    script = tmp_path / "child.py"
    script.write_text("import logging, sys, time\n"
                      "from loadmaster.console import BlockPrinter, Progress\n"
                      + textwrap.dedent(body))
    code, data, _ = run_on_pty([sys.executable, str(script)], pty_env(tag, **env),
                               cwd=tmp_path, rows=rows, cols=cols, timeout=30)
    return code, data.decode("utf-8", "replace")


URL = "http://127.0.0.1:8089/"
FINAL = ["=" * 40, "final benchmark:", "success count                 :42", "=" * 40]
PROGRESS = re.compile(r"\d+\.\d s / 3 s")

A_RUN = f"""
url = {URL!r}
stop = "run_time reached; calls in flight get up to 1s (stop_grace)"
printer = BlockPrinter(sys.stdout)
try:
    printer.message("waiting for 1 agent(s) on tcp://127.0.0.1:5557")
    printer.progress(Progress(None, 3.0, url=url, status="waiting for 1 agent(s): 0 registered"))
    time.sleep(0.05)
    printer.message(f"dashboard: {{url}} (its Stop button needs the token abc)")
    for second in range(1, 4):
        printer.live("\\n".join(["=" * 40, f"live block {{second}}",
                                  f"success count                 :{{10 * second}}", "=" * 40]))
        for half in range(2):
            stopping = stop if second == 3 and half else ""
            printer.progress(Progress(second - 0.5 + half / 2, 3.0, stopping=stopping, url=url))
            time.sleep(0.05)
    printer.final({chr(10).join(FINAL)!r})
    # after the final block: not shown
    printer.progress(Progress(3.2, 3.0, stopping="late tick", url=url))
    printer.message(f"dashboard: the final figures stay at {{url}} until Ctrl-C")
finally:
    printer.close()
"""


def test_a_run_shows_the_progress_line_then_the_final_block_leaves_no_trace_of_it(
        tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, A_RUN)
    assert code == 0, out
    before_final = SGR.sub("", out[:out.index("final benchmark:")])  # colours apart
    # the progress line showed, ticking: the status, then elapsed / run time, with the URL
    assert "waiting for 1 agent(s): 0 registered  dashboard: " + URL in before_final
    for shown in ("0.5 s / 3 s", "1.0 s / 3 s", "2.5 s / 3 s"):
        assert f"{shown}  dashboard: {URL}" in before_final, shown
    assert (f"3.0 s / 3 s  stopping: run_time reached; calls in flight get up to 1s "
            f"(stop_grace)  dashboard: {URL}") in before_final
    assert "\u2501" in before_final  # its bar
    assert "late tick" not in out
    # mid-run the screen showed the messages, the block and the progress line under it
    tick = f"1.5 s / 3 s  dashboard: {URL}"
    mid = Screen().feed(before_final[:before_final.index(tick) + len(tick)])
    assert mid.history() == [
        "waiting for 1 agent(s) on tcp://127.0.0.1:5557",
        f"dashboard: {URL} (its Stop button needs the token abc)",
        "=" * 40, "live block 2", "success count                 :20", "=" * 40,
        "\u2501" * 30 + "  " + tick]
    assert not mid.cursor_visible
    # at the end: the messages, the final block, the message after it; nothing else left
    screen = Screen().feed(out)
    assert screen.history() == [
        "waiting for 1 agent(s) on tcp://127.0.0.1:5557",
        f"dashboard: {URL} (its Stop button needs the token abc)",
        *FINAL,
        f"dashboard: the final figures stay at {URL} until Ctrl-C",
    ]
    assert screen.cursor_visible


TALL = """
printer = BlockPrinter(sys.stdout)
try:
    for n in range(3):
        block = "\\n".join(f"line {i} of block {n} " + "x" * 150 for i in range(60))
        printer.live(block)
        printer.progress(Progress(float(n), 3.0))
        printer.message(f"message {n}")
    printer.final("the final block\\n" + "y" * 150)
finally:
    printer.close()
"""


@pytest.mark.parametrize(("rows", "cols"), [(40, 120), (12, 40)])
def test_a_block_taller_and_wider_than_the_terminal_is_cut_to_it_and_leaves_nothing(
        tmp_path: Path, tag: str, rows: int, cols: int) -> None:
    code, out = run_child(tmp_path, tag, TALL, rows=rows, cols=cols)
    assert code == 0, out
    # at the last redraw before the final block: the messages, then the block's first
    # lines, a notice of the lines cut and the progress line, on the screen's rows
    tick = "2.0 s / 3 s"
    screen = Screen(rows, cols).feed(out[:out.rindex(tick) + len(tick)])
    assert screen.history()[:3] == ["message 0", "message 1", "message 2"]
    assert len(screen.history()) == 3 + rows  # no block left behind by a redraw
    visible = screen.visible()
    assert [line[:len(f"line {i} of block 2 x")] for i, line in enumerate(visible[:rows - 2])] \
        == [f"line {i} of block 2 x" for i in range(rows - 2)]
    assert all(line.endswith("\u2026") and len(line) == cols for line in visible[:rows - 2])
    assert visible[rows - 2].startswith(f"... {60 - (rows - 2)} more line(s)")
    assert visible[rows - 1].endswith(tick)
    # at the end: the messages and the final block, whole (the terminal wraps it)
    lines = Screen(rows, cols).feed(out).history()
    assert lines[:4] == ["message 0", "message 1", "message 2", "the final block"]
    assert "".join(lines[4:]) == "y" * 150


MARKUP = """
printer = BlockPrinter(sys.stdout)
try:
    printer.live("name [bold]x[/bold] [red] :smile: http://example.com/a?b=1 1234")
    printer.progress(Progress(1.0, 3.0, stopping="[blink]", url="http://h/[x]"))
    printer.message("message [green]ok[/green]")
    time.sleep(0.05)
finally:
    printer.close()
"""


def test_our_text_is_never_markup_and_a_close_without_final_keeps_the_last_block(
        tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, MARKUP)
    assert code == 0, out
    assert "1.0 s / 3 s  stopping: [blink]  dashboard: http://h/[x]" in SGR.sub("", out)
    screen = Screen().feed(out)
    # close() keeps the last live block (as the old printer left it), not the progress line
    assert screen.history() == ["message [green]ok[/green]",
                                "name [bold]x[/bold] [red] :smile: http://example.com/a?b=1 1234"]
    assert screen.cursor_visible


INTERRUPTED = """
printer = BlockPrinter(sys.stdout)
try:
    printer.live("the last live block")
    printer.progress(Progress(1.0, 3.0))
    raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
finally:
    printer.close()
    printer.close()  # idempotent
print(type(sys.stdout).__name__, type(sys.stderr).__name__, flush=True)
"""


def test_close_after_a_keyboard_interrupt_restores_the_cursor_and_the_streams(
        tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, INTERRUPTED)
    assert code == 0, out
    screen = Screen().feed(out)
    assert screen.history() == ["the last live block", "TextIOWrapper TextIOWrapper"]
    assert screen.cursor_visible
    assert out.rstrip().endswith("TextIOWrapper TextIOWrapper")


FORGOTTEN = """
printer = BlockPrinter(sys.stdout)
printer.live("a live block")
printer.progress(Progress(1.0, 3.0))
raise SystemExit(3)  # no close(): the exit still shows the cursor again
"""


def test_the_cursor_comes_back_even_when_close_is_forgotten(tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, FORGOTTEN)
    assert code == 3
    screen = Screen().feed(out)
    assert screen.cursor_visible
    assert screen.history() == ["a live block"]


LOGGING = """
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
log = logging.getLogger("loadmaster")
handler = logging.getLogger().handlers[0]
printer = BlockPrinter(sys.stdout)
try:
    printer.live("block 1")
    printer.progress(Progress(1.0, 3.0))
    log.warning("a warning during the run")
    print("a print to stderr", file=sys.stderr, flush=True)
    printer.live("block 2")
    printer.final("the final block")
finally:
    printer.close()
assert handler.stream is sys.stderr is sys.__stderr__, (handler.stream, sys.stderr)
log.warning("a warning after the run")
"""


def test_log_lines_and_stderr_during_the_run_print_above_the_live_area(
        tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, LOGGING)
    assert code == 0, out
    assert Screen().feed(out).history() == [
        "WARNING a warning during the run", "a print to stderr", "the final block",
        "WARNING a warning after the run"]


PLAIN = """
printer = BlockPrinter(sys.stdout, quiet={quiet})
try:
    printer.message("a message")
    printer.progress(Progress(None, 3.0, status="waiting"))
    printer.live("live 1\\nsecond line")
    printer.progress(Progress(1.0, 3.0, url="http://x/"))
    printer.live("live 2")
    printer.final("the final block")
    printer.message("after")
finally:
    printer.close()
"""


def test_quiet_on_a_terminal_prints_the_final_block_alone(tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, PLAIN.format(quiet=True))
    assert code == 0, out
    assert out == "the final block\r\n"


def test_a_dumb_terminal_gets_the_plain_appended_text(tmp_path: Path, tag: str) -> None:
    code, out = run_child(tmp_path, tag, PLAIN.format(quiet=False), TERM="dumb")
    assert code == 0, out
    assert out == "a message\r\nlive 1\r\nsecond line\r\nlive 2\r\nthe final block\r\nafter\r\n"


# -- end to end: `loadmaster run` on a terminal -----------------------------------------------


def test_loadmaster_run_on_a_terminal_shows_live_blocks_a_progress_line_then_the_final_block(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 2, "run_time": 10, "worker": 1})
    code, data, _ = run_on_pty(master_cmd(conf, "--run-time", "3"), pty_env(tag), cwd=tmp_path,
                               timeout=90)
    out = data.decode("utf-8", "replace")
    assert code == 0, out
    before_final = SGR.sub("", out[:out.index("final benchmark:")])
    assert "current rps" in before_final  # live blocks
    assert PROGRESS.search(before_final), before_final  # the progress line: elapsed / 3 s
    history = Screen().feed(out).history()
    text = "\n".join(history)
    assert "final benchmark:" in history
    final = history[history.index("final benchmark:") - 1:]
    assert any(line.startswith("success count") for line in final)
    # the final block replaced the live area: no live block, no progress line left
    assert "current rps" not in text
    assert not PROGRESS.search(text), text
    assert sum(line.startswith("success count") for line in history) == 1
    assert target.counts()["ok"] > 0


def test_loadmaster_run_quiet_on_a_terminal_prints_only_the_final_block(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 2, "run_time": 10, "worker": 1})
    code, data, err = run_on_pty(master_cmd(conf, "--run-time", "3", "--quiet"), pty_env(tag),
                                 cwd=tmp_path, timeout=90, separate_stderr=True)
    out = data.decode("utf-8", "replace")
    assert code == 0, (out, err)
    assert "\x1b" not in out  # no live area was drawn
    lines = out.replace("\r\n", "\n").splitlines()
    assert lines[0] == "=" * 40 and lines[1] == "final benchmark:", out
    assert "current rps" not in out and not PROGRESS.search(out)
    assert sum(line.startswith("success count") for line in lines) == 1

