"""The console blocks: the seed's fields, the final extras, terminal and plain output."""

from __future__ import annotations

import io

from loadmaster.console import (
    AgentLine,
    BlockPrinter,
    FinalView,
    LiveView,
    format_final,
    format_live,
)
from protocol.stats import Totals


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


def test_on_a_terminal_live_blocks_replace_each_other_and_the_final_stays() -> None:
    out = FakeTerminal()
    printer = BlockPrinter(out)
    printer.live("a\nb")
    printer.live("c\nd")
    printer.final("final")
    assert out.getvalue() == "a\nb\n\x1b[2F\x1b[Jc\nd\n\x1b[2F\x1b[Jfinal\n"


def test_plain_text_when_not_a_terminal() -> None:
    out = io.StringIO()
    printer = BlockPrinter(out)
    printer.live("a\nb")
    printer.live("c")
    printer.final("final")
    assert out.getvalue() == "a\nb\nc\nfinal\n"
