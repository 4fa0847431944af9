"""Packed histogram arrays as a peer would send them, for tests that forge messages."""

from __future__ import annotations

from array import array


def u16(values: list[int]) -> bytes:
    return array("H", values).tobytes()


def u32(values: list[int]) -> bytes:
    return array("I", values).tobytes()


def u64(values: list[int]) -> bytes:
    return array("Q", values).tobytes()
