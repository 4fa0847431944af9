"""Issue 22's floors, judged on the figures of one run of compare.py.

- the built-in client at least 85% of the ceiling variant (f), and at least 65% of
  wrk (e), in requests/s: judged for each of its two ways, through ``execute()`` (a) and
  with its request declared (i, ``FixedRequest``);
- no-op calls at least 90% of a bare loop of awaits that records the same histogram;
- at most 5 KiB per idle connected client;
- exactness unchanged: success count equal to what the target served.

A ratio between two generators measures them only while both had their core to the
full. When one did not, it could have done more: with ours short the ratio is too low,
so a PASS still holds; with the one it is held against short, too high, so a FAIL still
holds; otherwise the line says NO VERDICT, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from _figures import SATURATED, pct

CEILING_FLOOR = 0.85
WRK_FLOOR = 0.65
NOOP_FLOOR = 0.90
IDLE_MAX_KIB = 5.0


@dataclass(frozen=True)
class Measured:
    """A rate and the share of its core its generator had (None: not known)."""

    name: str  # a, e, f, no-op, bare loop
    rate: float
    cpu: float | None = None


@dataclass
class Floors:
    """What this run measured of issue 22's figures; None: not run (or failed)."""

    ours: Measured | None = None  # variant a: the built-in client through execute()
    fixed: Measured | None = None  # variant i: the built-in client, its request declared
    ceiling: Measured | None = None
    api_bound: Measured | None = None  # variant g: what the API allows at most
    fixed_bound: Measured | None = None  # variant h: what a fixed-request mode would
    wrk: Measured | None = None
    noop: Measured | None = None
    bare: Measured | None = None
    idle_kib: float | None = None
    exact: dict[str, str] = field(default_factory=dict)  # variant -> EXACT, MISMATCH...

    def lines(self) -> list[str]:
        return [
            "issue 22 floors, on this run's figures:",
            _ratio("a / ceiling (f), requests/s", self.ours, self.ceiling, CEILING_FLOOR,
                   "a,f"),
            _ratio("i / ceiling (f), requests/s", self.fixed, self.ceiling, CEILING_FLOOR,
                   "i,f"),
            *self._bound(),
            _ratio("a / wrk (e), requests/s", self.ours, self.wrk, WRK_FLOOR, "a,e"),
            _ratio("i / wrk (e), requests/s", self.fixed, self.wrk, WRK_FLOOR, "i,e"),
            _ratio("no-op / bare loop, calls/s", self.noop, self.bare, NOOP_FLOOR, "noop"),
            self._memory(),
            self._exactness(),
        ]

    def _bound(self) -> list[str]:
        """Not a floor: where the API's bound (g) sits, beside a / f's floor."""
        bound, ceiling, ours = self.api_bound, self.ceiling, self.ours
        if bound is None or ceiling is None or not ceiling.rate or not bound.rate:
            return []
        lines = [f"    the API's bound (g) / ceiling (f) = {bound.rate / ceiling.rate:.3f}: "
                 "what a task, two coroutines, a future and a response a call cost"]
        if ours is not None:
            lines.append(f"    a / the API's bound (g) = {ours.rate / bound.rate:.3f}: what "
                         "our code costs on top of them")
        if bound.rate / ceiling.rate < CEILING_FLOOR:
            lines.append(f"    (the floor of {CEILING_FLOOR:.2f} is above the bound: no "
                         "implementation of this API reaches it on this run's host)")
        fixed = self.fixed_bound
        if fixed is not None and fixed.rate:
            lines.append(f"    a fixed-request mode's bound (h) / ceiling (f) = "
                         f"{fixed.rate / ceiling.rate:.3f}: our connection, counted and "
                         "recorded as a is, driven from its callbacks, nothing else")
        return lines

    def _memory(self) -> str:
        what = "  memory per idle connected client"
        if self.idle_kib is None:
            return f"{what}: NOT MEASURED (--only memory)"
        verdict = "PASS" if self.idle_kib <= IDLE_MAX_KIB else "FAIL"
        return f"{what} = {self.idle_kib:.2f} KiB, at most {IDLE_MAX_KIB:g} KiB: {verdict}"

    def _exactness(self) -> str:
        what = "  exactness (success count = what the target served)"
        if not self.exact:
            return f"{what}: NOT MEASURED (--only exact)"
        every = ", ".join(f"{key} {verdict}" for key, verdict in self.exact.items())
        exact = all(verdict == "EXACT" for verdict in self.exact.values())
        return f"{what}: {every}: {'PASS' if exact else 'FAIL'}"


def _ratio(what: str, ours: Measured | None, base: Measured | None, floor: float,
           needs: str) -> str:
    if ours is None or base is None or not base.rate:
        return f"  {what}: NOT MEASURED (--only {needs})"
    ratio = ours.rate / base.rate
    verdict = "PASS" if ratio >= floor else "FAIL"
    short = [m for m in (ours, base) if m.cpu is not None and m.cpu < SATURATED]
    if short:
        # A generator under its core's limit could have done more: ours short makes the
        # ratio too low (a PASS still holds), the base short too high (a FAIL still holds).
        holds = base not in short if verdict == "PASS" else ours not in short
        why = "; ".join(f"{m.name}'s generator at {pct(m.cpu)} of its core" for m in short)
        if holds:
            verdict += f" ({why}: it could have done more, which cannot change this verdict)"
        else:
            verdict = (f"NO VERDICT ({verdict} on these figures, but {why}: something else "
                       "was the limit)")
    return f"  {what} = {ratio:.3f}, floor {floor:.2f}: {verdict}"
