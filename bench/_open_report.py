"""The `open` extra's report (issue 19): its table, ratios per round and verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from _figures import DISTURBED, SATURATED, median, num, pct
from _loadmaster import FinalBlock
from _target import CLIENT_CPU

# the open variant: (ii)'s arrival rate, far above what the pool can start, and (iii)'s,
# as multiples of (i)'s measured closed-model rate; the issue's two targets
OPEN_OVER = 3.0
OPEN_HELD = 0.8
OPEN_COST_FLOOR = 0.90  # (ii)'s successes/s at least this share of (i)'s
OPEN_HOLD_TOLERANCE = 0.01  # (iii)'s calls started/s this close to its arrival rate


@dataclass
class OpenRun:
    """One run of the open variant: (i) the closed model, (ii) or (iii) the open."""

    step: str  # i, ii, iii
    rate: float | None  # arrival_rate, calls/s; None: the closed model
    final: FinalBlock
    live: float | None  # successes/s of the last live block: the stop left out
    cpu: float | None
    other: float | None

    @property
    def achieved(self) -> float:
        """(iii): calls started/s; (i), (ii): successes/s."""
        if self.step == "iii" and self.final.started_rate is not None:
            return self.final.started_rate
        return self.final.rps


OpenRound = tuple[OpenRun, OpenRun, OpenRun]  # (i), (ii), (iii)


def open_lines(rounds: list[OpenRound], users: int) -> list[str]:
    """The open variant's table, its two ratios per round, and the verdicts on their
    medians."""
    if not rounds:
        return ["open: loadmaster failed in every round (details on stderr)"]
    lines = [
        f"open model (issue 19), built-in client (http_fast.py), 1 worker, {users} clients "
        f"(closed) or a pool of {users} made at the start (open):",
        f"  {'round':>5} {'run':<30} {'arrival/s':>10} {'run time':>8} {'success/s':>10} "
        f"{'live/s':>10} {'started/s':>10} {'late':>9} {'dropped':>9} {'gen CPU':>8} "
        f"{'other':>6}  ratio",
    ]
    labels = {"i": f"i   closed, {users} users, wait 0", "ii": f"ii  open, {OPEN_OVER:g} x (i)",
              "iii": f"iii open, {OPEN_HELD:.0%} of (i)"}
    costs, holds, steady = [], [], []  # steady: (ii) against (i) without start and stop
    valid = []  # rounds whose (i) measured the generator: it was at its core's limit
    for n, (closed, over, held) in enumerate(rounds, 1):
        cost = over.final.rps / closed.final.rps
        hold = held.achieved / (held.rate or 1.0)
        costs.append(cost)
        holds.append(hold)
        steady.append(over.live / closed.live if over.live and closed.live else float("nan"))
        if closed.cpu is not None and closed.cpu >= SATURATED:
            valid.append(n - 1)
        ratios = {"i": "", "ii": f"{cost:.3f} of (i)'s success/s",
                  "iii": f"{hold:.4f} of its arrival rate ({100 * (hold - 1):+.2f}%)"}
        for r in (closed, over, held):
            f = r.final
            flag = " *" if r.step == "i" and r.cpu is not None and r.cpu < SATURATED else ""
            lines.append(
                f"  {n:>5} {labels[r.step]:<30} {num(r.rate):>10} {f.run_time:>8.3f} "
                f"{f.rps:>10,.0f} "
                f"{num(r.live):>10} {num(f.started_rate):>10} {num(f.late):>9} "
                f"{num(f.dropped):>9} "
                f"{pct(r.cpu) + flag:>8} {pct(r.other):>6}  {ratios[r.step]}")
            if f.fail:
                lines.append(f"  {'':>5} {'':<30} {f.fail:,} failed calls: {f.errors}")
    if any(c.cpu is not None and c.cpu < SATURATED for c, _, _ in rounds):
        lines.append(f"  * generator under {SATURATED:.0%} of its core in (i): the target, the "
                     "loopback or other load was the limit, not the generator; that round is "
                     "left out of the verdicts")
    worst = max((r.other for rs in rounds for r in rs if r.other is not None), default=0.0)
    if worst > DISTURBED:
        lines.append(f"  WARNING: other processes used up to {worst:.0%} of CPU {CLIENT_CPU} "
                     "during a run: these figures are disturbed")
    lines += [
        _verdict("scheduler cost: (ii) success/s / (i) success/s", costs, valid, 3,
                 lambda c: c >= OPEN_COST_FLOOR, f"floor {OPEN_COST_FLOOR:.2f}"),
        _verdict(f"rate held at {OPEN_HELD:.0%}: (iii) calls started/s / arrival rate", holds,
                 valid, 4, lambda h: abs(h - 1) <= OPEN_HOLD_TOLERANCE,
                 f"within {OPEN_HOLD_TOLERANCE:.0%}"),
    ]
    lines.append(_verdict("the same without the start and the stop: (ii) live/s / (i) "
                          "live/s", steady, valid, 3, lambda s: s >= OPEN_COST_FLOOR,
                          f"floor {OPEN_COST_FLOOR:.2f}", "(a diagnosis, not the target)"))
    lines += [
        "  run time and success/s: the final block's (success/s: its rps, success count / run "
        "time); live/s: the last live block's current rps",
        "  (successes/s over the last 5 complete seconds before the stop); started/s: the final "
        "block's calls started/s",
        "  ((success + fail) / run time); late: started over 10 ms after the intended start; "
        "dropped: never started",
    ]
    return lines


def _verdict(what: str, ratios: list[float], valid: list[int], digits: int,
             passes: Callable[[float], bool], target: str, note: str = "") -> str:
    """PASS or FAIL on the median of the rounds whose (i) measured the generator (a ratio
    NaN: no figure in that round)."""
    every = ", ".join("-" if math.isnan(r) else f"{r:.{digits}f}" for r in ratios)
    valid = [i for i in valid if not math.isnan(ratios[i])]
    if not valid:
        return (f"  {what}: rounds {every}, {target}: NO VERDICT (the generator was under "
                f"{SATURATED:.0%} of its core in every (i))")
    middle = median([ratios[i] for i in valid])
    of = f"median of {len(valid)} rounds" if len(valid) > 1 else "one round"
    if len(valid) < len(ratios):
        of += " with (i) at its core's limit"
    return (f"  {what} = {middle:.{digits}f} ({of}; rounds {every}), {target}: "
            f"{'PASS' if passes(middle) else 'FAIL'}" + (f" {note}" if note else ""))
