"""CPU lists as `taskset` writes them (`1`, `0,2-3`), for --cpu-list on both sides."""

from __future__ import annotations

__all__ = [
    "parse_cpu_list",
]


def parse_cpu_list(text: str) -> set[int]:
    """The CPUs named by ``text``; ValueError naming the text when it is not a CPU list."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 0 or last < first:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ValueError(f"--cpu-list {text!r}: expected CPU numbers such as 1 or 0,2-3") \
            from None
    if not cpus:
        raise ValueError(f"--cpu-list {text!r}: names no CPU")
    return cpus
