"""The console blocks: the seed's fields, the final extras, terminal and plain output."""

from __future__ import annotations

import io
import re

import pytest

from loadmaster.console import (
    AgentLine,
    BlockPrinter,
    FinalView,
    GraceView,
    LiveView,
    Progress,
    format_final,
    format_live,
    format_progress,
)
from protocol.stats import Totals
from tests.test_console_tty import Screen


def totals() -> Totals:
    t = Totals()
    st = t.op("HttpClient")
    for ms in range(1, 101):
        st.record_ok(ms * 1_000_000)
    st.fail = 5
    t.add_error(("HttpClient", "ValueError", "bad status 500"), 5)
    return t


def ms(value: str) -> float:
    assert value.endswith(" ms")
    return float(value[:-3])


def close(value: str, expected_ms: float) -> bool:
    """Within the histogram's documented error (1/256) plus the printed rounding."""
    return abs(ms(value) - expected_ms) <= expected_ms / 256 + 0.05


def fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith(" "):
            label, _, value = line.partition(":")
            out[label.strip()] = value
    return out


def test_live_block_has_the_seed_fields_and_current_rps() -> None:
    text = format_live(LiveView(run_time=10.0, users=8, totals=totals(), current_rps=9.5))
    f = fields(text)
    assert f["success count"] == "100" and f["fail count"] == "5"
    assert f["rps"] == "10.00"  # success / run time, as in the seed
    assert f["current rps"] == "9.50"
    assert f["accuracy"] == "95.24%"
    assert f["users"] == "8"
    # min, max and average are exact; percentiles are bucket midpoints
    assert f["min response time"] == "1.000 ms" and f["max response time"] == "100.0 ms"
    assert f["average response time"] == "50.5 ms"
    assert close(f["Median response time"], 50) and close(f["90% response time"], 90)


def test_final_block_adds_tail_percentiles_errors_and_agents() -> None:
    view = FinalView(run_time=20.0, users=8, totals=totals(), missed_deltas=2,
                     agents=[AgentLine("a", 2, 4, 2.5, ok=50, fail=5),
                             AgentLine("b", 2, 4, 2.5, ok=50, state="LOST")],
                     notes=["agent b LOST at 3.0s into the run (no heartbeat for 3.0s)"])
    text = format_final(view)
    f = fields(text)
    assert text.splitlines()[1] == "final benchmark:"
    assert f["rps"] == "5.00"
    assert close(f["95% response time"], 95) and close(f["99% response time"], 99)
    assert close(f["99.9% response time"], 100)
    assert "         5  HttpClient           ValueError           bad status 500" in text
    assert any(line.split()[:1] == ["b"] and line.endswith("LOST") for line in text.splitlines())
    assert "live deltas lost on the stats channel: 2" in text
    assert text.endswith("agent b LOST at 3.0s into the run (no heartbeat for 3.0s)")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 80x25 colour terminal for rich (a StringIO has no size of its own)."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "25")
    for name in ("NO_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)


def run_like_run_py(printer: BlockPrinter) -> None:
    printer.message("waiting for 1 agent(s)")
    printer.progress(Progress(None, 3.0, status="waiting for 1 agent(s): 0 registered"))
    printer.live("a\nb")
    printer.progress(Progress(1.0, 3.0, url="http://127.0.0.1:8089/"))
    printer.message("msg")
    printer.live("c")
    printer.progress(Progress(3.1, 3.0, stopping="run_time reached"))
    printer.final("final")
    printer.progress(Progress(3.2, 3.0, stopping="run_time reached"))
    printer.message("after")
    printer.close()
    printer.close()


@pytest.mark.usefixtures("terminal_env")
def test_on_a_terminal_live_blocks_replace_each_other_and_the_final_stays(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = FakeTerminal()
    printer = BlockPrinter(out)
    assert printer.tty
    run_like_run_py(printer)
    text = out.getvalue()
    assert "a\nb\n" in text and "1.0 s / 3 s" in text and "stopping: run_time reached" in text
    # what the terminal shows at the end: the messages, the final block; nothing else
    assert Screen(25, 80).feed(text).history() == ["waiting for 1 agent(s)", "msg", "final",
                                                   "after"]
    assert capsys.readouterr().out == ""  # everything went to the stream given


def test_plain_text_when_not_a_terminal() -> None:
    out = io.StringIO()
    printer = BlockPrinter(out)
    printer.live("a\nb")
    printer.live("c")
    printer.final("final")
    assert out.getvalue() == "a\nb\nc\nfinal\n"


@pytest.mark.usefixtures("terminal_env")
def test_not_a_terminal_appends_every_block_and_message_and_no_progress_line() -> None:
    out = io.StringIO()
    printer = BlockPrinter(out)
    assert not printer.tty
    run_like_run_py(printer)
    assert out.getvalue() == "waiting for 1 agent(s)\na\nb\nmsg\nc\nfinal\nafter\n"


@pytest.mark.usefixtures("terminal_env")
@pytest.mark.parametrize("out", [io.StringIO(), FakeTerminal()], ids=["file", "terminal"])
def test_quiet_prints_the_final_block_alone(out: io.StringIO) -> None:
    run_like_run_py(BlockPrinter(out, quiet=True))
    assert out.getvalue() == "final\n"


@pytest.mark.usefixtures("terminal_env")
def test_a_dumb_terminal_gets_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    out = FakeTerminal()
    printer = BlockPrinter(out)
    assert printer.tty  # it is one: the dashboard's "until Ctrl-C" still applies
    run_like_run_py(printer)
    assert out.getvalue() == "waiting for 1 agent(s)\na\nb\nmsg\nc\nfinal\nafter\n"


@pytest.mark.usefixtures("terminal_env")
def test_our_text_is_printed_as_it_is_never_as_markup() -> None:
    out = FakeTerminal()
    printer = BlockPrinter(out)
    printer.live("[bold]x[/bold] :smile: [red]")
    printer.message("[green]m")
    printer.close()
    assert Screen(25, 80).feed(out.getvalue()).history() == [
        "[green]m", "[bold]x[/bold] :smile: [red]"]


@pytest.mark.parametrize(("progress", "text"), [
    (Progress(None, 30.0), "starting"),
    (Progress(None, 30.0, status="waiting for 2 agent(s): 1 registered",
              url="http://127.0.0.1:8089/"),
     "waiting for 2 agent(s): 1 registered  dashboard: http://127.0.0.1:8089/"),
    (Progress(None, 30.0, status="agents preparing"), "agents preparing"),
    (Progress(0.0, 30.0), "0.0 s / 30 s"),
    (Progress(-0.2, 30.0), "0.0 s / 30 s"),  # just before T0
    (Progress(12.34, 30.0), "12.3 s / 30 s"),
    (Progress(1.25, 2.5), "1.2 s / 2.5 s"),
    (Progress(65.7, 120.0), "1:05 / 2:00"),
    (Progress(3725.0, 7200.0), "1:02:05 / 2:00:00"),
    (Progress(3725.0, 3000.0), "62:05 / 50:00"),  # past the run time while stopping
    (Progress(12.0, 30.0, url="http://[::1]:8089/"), "12.0 s / 30 s  dashboard: http://[::1]:8089/"),
    (Progress(30.4, 30.0, stopping="run_time reached; calls in flight get up to 10s "
                                   "(stop_grace)", url="http://h:1/"),
     "30.4 s / 30 s  stopping: run_time reached; calls in flight get up to 10s (stop_grace)  "
     "dashboard: http://h:1/"),
])
def test_the_progress_text(progress: Progress, text: str) -> None:
    assert format_progress(progress) == text


def progress_row(monkeypatch: pytest.MonkeyPatch, p: Progress, columns: int) -> str:
    """The terminal's last row once ``p`` is shown under a one-line block."""
    monkeypatch.setenv("COLUMNS", str(columns))
    out = FakeTerminal()
    printer = BlockPrinter(out)
    printer.live("block")
    printer.progress(p)
    screen = Screen(25, columns).feed(out.getvalue())
    printer.close()
    assert screen.history()[0] == "block"
    return screen.history()[1]


@pytest.mark.usefixtures("terminal_env")
def test_the_progress_line_has_a_bar_when_there_is_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")  # then the bar's two parts differ in shape
    assert progress_row(monkeypatch, Progress(6.0, 30.0), 100) \
        == "\u2501" * 5 + "\u2500" * 20 + "  6.0 s / 30 s"  # a fifth of 25 cells
    assert progress_row(monkeypatch, Progress(45.0, 30.0), 100) \
        == "\u2501" * 25 + "  45.0 s / 30 s"
    assert progress_row(monkeypatch, Progress(6.0, 30.0), 50) == "6.0 s / 30 s"  # narrow
    assert progress_row(monkeypatch, Progress(None, 30.0, status="agents preparing"), 100) \
        == "agents preparing"


@pytest.mark.usefixtures("terminal_env")
def test_a_long_reason_is_shortened_so_the_url_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "run_time reached; calls in flight get up to 10s (stop_grace)"
    row = progress_row(monkeypatch, Progress(30.4, 30.0, stopping=reason,
                                             url="http://127.0.0.1:8089/"), 80)
    assert len(row) <= 80
    assert row.startswith("30.4 s / 30 s  stopping: run_time reached; ")
    assert row.endswith("\u2026  dashboard: http://127.0.0.1:8089/")


@pytest.mark.usefixtures("terminal_env")
def test_a_tall_block_is_cut_to_the_terminal_keeping_the_progress_line() -> None:
    out = FakeTerminal()
    printer = BlockPrinter(out)
    printer.live("\n".join(f"line {i}" for i in range(40)))
    printer.progress(Progress(1.0, 3.0))
    rows = Screen(25, 80).feed(out.getvalue()).history()
    printer.close()
    assert rows[:23] == [f"line {i}" for i in range(23)]
    assert rows[23] == "... 17 more line(s): a taller terminal shows them"
    assert rows[24].endswith("1.0 s / 3 s") and len(rows) == 25
    # close() leaves the whole last block (it stays in the history), without the progress
    assert Screen(25, 80).feed(out.getvalue()).history()[-1] == "line 39"


# -- the error table's limit, users planned, the stop grace, live labels --------------------


def error_section(text: str) -> list[str]:
    """The rows of the error table, without its header."""
    lines = text.splitlines()
    start = lines.index("errors:") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        rows.append(line)
    return rows


def many_errors(distinct: int) -> Totals:
    """``distinct`` errors, the k-th (1-based) seen k times."""
    t = Totals()
    st = t.op("HttpClient")
    st.record_ok(1_000_000)
    for k in range(1, distinct + 1):
        t.add_error(("HttpClient", "ValueError", f"error number {k}"), k)
        st.fail += k
    return t


def test_more_than_20_errors_show_the_20_most_frequent_and_sum_the_rest() -> None:
    text = format_final(FinalView(run_time=1.0, users=1, totals=many_errors(25)))
    rows = error_section(text)
    assert len(rows) == 21
    counts = [int(row.split()[0]) for row in rows[:20]]
    assert counts == list(range(25, 5, -1))  # most frequent first
    assert rows[0].endswith("error number 25") and rows[19].endswith("error number 6")
    assert rows[20].split() == ["15", "...", "5", "more", "distinct", "error(s)"]  # 1+2+3+4+5


@pytest.mark.parametrize(("distinct", "rows"), [(1, 1), (20, 20), (21, 21)])
def test_up_to_20_errors_are_all_shown_without_a_summary_line(distinct: int, rows: int) -> None:
    section = error_section(format_final(FinalView(run_time=1.0, users=1,
                                                   totals=many_errors(distinct))))
    assert len(section) == rows
    more = [row for row in section if "more distinct" in row]
    if distinct > 20:
        assert more == [f"  {1:>8}  ... 1 more distinct error(s)"]
    else:
        assert more == []


@pytest.mark.parametrize(("users", "planned", "shown"), [
    (8, None, "8"), (8, 8, "8"), (6, 8, "6 (planned 8)"), (0, 8, "0 (planned 8)")])
def test_users_show_the_planned_number_only_when_it_differs(
        users: int, planned: int | None, shown: str) -> None:
    text = format_final(FinalView(run_time=1.0, users=users, totals=totals(),
                                  users_planned=planned))
    assert fields(text)["users"] == shown


@pytest.mark.parametrize(("grace", "line"), [
    (None, None),
    (GraceView(0.0, 0, 0), None),
    (GraceView(0.8, 0, 0), None),  # nothing was in flight: nothing to say
    (GraceView(0.25, 3, 0), "stop grace: 0.250 s; calls in flight at the stop: 3 finished, "
                            "0 cancelled"),
    (GraceView(10.0, 1, 4), "stop grace: 10.000 s; calls in flight at the stop: 1 finished, "
                            "4 cancelled (failures; a cancelled call does not extend the run "
                            "time)"),
])
def test_the_stop_grace_line_appears_only_when_calls_were_in_flight(
        grace: GraceView | None, line: str | None) -> None:
    text = format_final(FinalView(run_time=1.0, users=1, totals=totals(), grace=grace))
    lines = [x for x in text.splitlines() if x.startswith("stop grace")]
    assert lines == ([line] if line else [])


def test_the_live_block_says_the_rate_window_and_that_the_run_is_stopping() -> None:
    text = format_live(LiveView(run_time=10.0, users=8, totals=totals(), current_rps=9.5,
                                rate_window=3, stopping="run_time reached; grace 10s"))
    f = fields(text)
    assert f["current rps (last 3 s)"] == "9.50"
    assert "current rps" not in f
    assert f["stopping"] == "run_time reached; grace 10s"
    running = fields(format_live(LiveView(run_time=10.0, users=8, totals=totals(),
                                          current_rps=9.5, rate_window=5)))
    assert "stopping" not in running
    assert running["current rps (last 5 s)"] == "9.50"


# -- the load generator: CPU, loop lag, saturation -----------------------------------------


def agent_lines(text: str) -> dict[str, str]:
    return {k: v for k, v in fields(text).items() if k.startswith("agent ")}


def test_the_live_block_gives_each_agent_its_cpu_and_loop_lag() -> None:
    view = LiveView(run_time=10.0, users=8, totals=totals(), current_rps=9.5, agents=[
        AgentLine("a", 2, 4, 4.75, cpu=0.4567, loop_lag=0.0031),
        AgentLine("b", 2, 4, 4.75, cpu=0.97, loop_lag=0.052, saturated=True),
        AgentLine("c", 1, 0, 0.0, state="LOST")])
    assert agent_lines(format_live(view)) == {
        "agent a": "2 workers, 4 clients, 4.8 rps, cpu 45.7%, loop lag 3.1 ms",
        "agent b": "2 workers, 4 clients, 4.8 rps, cpu 97.0%, loop lag 52.0 ms, SATURATED",
        "agent c": "1 workers, 0 clients, 0.0 rps, cpu -, loop lag - [LOST]",
    }


def test_the_live_block_shows_a_single_agent_too() -> None:
    text = format_live(LiveView(run_time=3.0, users=1, totals=totals(), current_rps=1.0,
                                agents=[AgentLine("local", 1, 1, 1.0, cpu=1.0, loop_lag=0.5,
                                                  saturated=True)]))
    assert agent_lines(text) == {"agent local": "1 workers, 1 clients, 1.0 rps, cpu 100.0%, "
                                                "loop lag 500.0 ms, SATURATED"}


def table(text: str) -> tuple[str, list[str]]:
    lines = text.splitlines()
    start = lines.index("agents:")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        rows.append(line)
    return lines[start + 1], rows


def read_table(text: str) -> dict[str, dict[str, str]]:
    """Each value read under the header label its text overlaps, as scripts read it."""
    header, rows = table(text)
    labels = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    out = {}
    for line in rows:
        row = {}
        for m in re.finditer(r"\S+", line):
            under = [name for a, b, name in labels if m.start() < b and a < m.end()]
            assert len(under) == 1, f"{m.group()!r} is not under one label:\n{header}\n{line}"
            row[under[0]] = m.group()
        out[row["name"]] = row
    return out


def test_the_final_agents_table_has_cpu_max_lag_and_the_generators_state() -> None:
    view = FinalView(run_time=20.0, users=8, totals=totals(), agents=[
        AgentLine("a", 2, 4, 2.5, ok=50, fail=5, cpu=0.4567, loop_lag=0.0031),
        AgentLine("busy-agent", 2, 4, 2.5, ok=50, cpu=12.345, loop_lag=61.2, saturated=True),
        AgentLine("c", 1, 0, 0.0, state="LOST")])
    rows = read_table(format_final(view))
    assert [(r["cpu %"], r["max lag ms"], r["generator"], r["state"]) for r in rows.values()] \
        == [("45.7", "3.1", "ok", "ok"), ("1234.5", "61200.0", "SATURATED", "ok"),
            ("-", "-", "ok", "LOST")]
    assert rows["a"]["success"] == "50" and rows["a"]["workers"] == "2"
    # scripts read the state as the last word and the success count as the fourth
    _, lines = table(format_final(view))
    assert [(line.split()[-1], line.split()[3]) for line in lines] \
        == [("ok", "50"), ("ok", "50"), ("LOST", "0")]


def test_a_single_agent_has_its_table_row() -> None:
    text = format_final(FinalView(run_time=5.0, users=1, totals=totals(), agents=[
        AgentLine("local", 1, 1, 19.5, ok=98, cpu=0.993, loop_lag=0.066)]))
    assert read_table(text)["local"]["cpu %"] == "99.3"
    assert "SATURATED" not in text


def test_notes_follow_the_agents_table() -> None:
    note = ("note: agent a was saturated (over 90% of a core or loop lag over 20 ms for 3 s "
            "in a row: worker 0 from second 4): its figures measure the load generator as "
            "much as the target; add workers or agents")
    text = format_final(FinalView(run_time=5.0, users=1, totals=totals(), notes=[note],
                                  agents=[AgentLine("a", 1, 1, 1.0, cpu=1.0, loop_lag=0.1,
                                                    saturated=True)]))
    lines = text.splitlines()
    assert lines[-1] == note
    assert lines[-2].split()[0] == "a" and "SATURATED" in lines[-2].split()


# -- the built-in HTTP client's figures: statuses by class and code, bytes ---------------


def http_lines(text: str) -> dict[str, str]:
    """The http section's rows by name (their text after the name), its header checked."""
    lines = text.splitlines()
    start = lines.index("http:")
    assert lines[start + 1].split() == ["name", "sent", "received", "responses"]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        name, rest = line[2:26].strip(), line[26:]
        rows[name] = " ".join(rest.split())
    return rows


def http_totals() -> Totals:
    t = totals()  # "HttpClient": 100 ok, 5 fail, no HTTP figures
    get = t.op("get")
    for _ in range(9_815):
        get.record_ok(1_000_000)
    get.statuses = {200: 9_812, 404: 3}
    get.sent, get.received = 9_815 * 57, 9_815 * 140
    upload = t.op("upload")
    upload.record_ok(2_000_000)
    upload.statuses = {code: 1 for code in (200, 201, 204, 301, 302, 304, 400, 503)}
    upload.sent, upload.received = 5 * 1024**3 + 1024**3 // 2, 812
    timeouts = t.op("slow")  # every request timed out: bytes sent, no response
    timeouts.fail = 4
    timeouts.sent = 400
    return t


def test_the_http_section_gives_per_name_classes_codes_and_bytes() -> None:
    text = format_final(FinalView(run_time=10.0, users=4, totals=http_totals()))
    assert http_lines(text) == {
        "get": "546.3 KiB 1.3 MiB 2xx: 9,812 4xx: 3 (200: 9,812 404: 3)",
        "slow": "400 B 0 B none",  # bytes sent, no response
        # more than HTTP_CODES_SHOWN distinct codes: the classes only
        "upload": "5.5 GiB 812 B 2xx: 3 3xx: 3 4xx: 1 5xx: 1",
    }
    lines = text.splitlines()
    # under the operations table, whose columns did not change
    assert lines[lines.index("http:") - 1].split()[:3] == ["upload", "1", "0"]
    assert lines[lines.index("operations:") + 1].split() == [
        "name", "success", "fail", "avg", "p90", "p99"]
    # the fields scripts read are those they were
    f = fields(text)
    assert (f["success count"], f["fail count"], f["rps"]) == ("9916", "9", "991.60")


def test_the_http_section_shows_with_a_single_name_and_six_codes() -> None:
    t = Totals()
    st = t.op("HttpFast")
    st.record_ok(1_000_000)
    st.statuses = {200: 1, 201: 2, 202: 3, 404: 4, 500: 5, 503: 1_234_567}
    st.sent, st.received = 1023, 1024
    text = format_final(FinalView(run_time=1.0, users=1, totals=t))
    assert "operations:" not in text
    assert http_lines(text) == {"HttpFast": "1023 B 1.0 KiB 2xx: 6 4xx: 4 5xx: 1,234,572 "
                                            "(200: 1 201: 2 202: 3 404: 4 500: 5 503: 1,234,567)"}


def test_no_http_section_for_clients_without_http_figures() -> None:
    text = format_final(FinalView(run_time=20.0, users=8, totals=totals(),
                                  agents=[AgentLine("a", 2, 4, 2.5, ok=100, fail=5)]))
    assert "http:" not in text.splitlines()
    assert "responses" not in text and "2xx" not in text
