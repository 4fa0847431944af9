"""How compare.py's figures are judged and shown: the shared thresholds and formats."""

from __future__ import annotations

SATURATED = 0.9  # a generator under this share of its core did not set the rate
DISTURBED = 0.05  # other load on the generator's core above which the figures are not clean


def pct(share: float | None) -> str:
    """A share of one core (or any fraction) in %, "-" without a figure."""
    return "-" if share is None else f"{share * 100:.0f}%"


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
