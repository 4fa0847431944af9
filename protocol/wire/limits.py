"""Every size limit of the wire, in one table.

A limit is enforced where a message is built (``protocol.wire.codec.encode`` refuses a body
over its type's limit with ``MessageTooLarge``; the master checks a config's custom
values and a job against them before sending), so the error names the key or message at
fault, and again where it is read (``decode``), before any field is used. libzmq's
``MAXMSGSIZE`` sits above them on every socket as the last guard: it drops the
connection of a peer that sends more.

| limit | bytes | what it bounds |
| --- | --- | --- |
| CONTROL_MAX | 64 KiB | a small control message: REGISTER, heartbeats, STOP, notes |
| ERROR_TEXT_MAX | 20,000 characters | a traceback in JOB_FAILED |
| ERROR_MESSAGE_MAX | 128 KiB | a message carrying such a text (4 bytes a character at most) |
| CUSTOM_CONF_MAX | 16 MiB | a config's custom values, packed, in all |
| JOB_MAX | 64 MiB | a job with its bundle: the default of ``loadagent --max-message`` |
| JOB_MIN | 64 KiB | the smallest ``--max-message`` an agent accepts |
| PIPE_MAX | 64 MiB | one message on the agent-worker pipe (the worker's job, without bundle) |
| DELTA_MAX | 4 MiB | one live delta on the stats channel |
| FINAL_MAX | 16 MiB | one worker's final totals |
| STATS_SOCKET_MAX | 8 MiB | MAXMSGSIZE of the master's stats socket (above DELTA_MAX) |
| CONFIG_FILE_MAX | 4 MiB | a YAML config file (``loadmaster.config``) |
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
_UNITS = ("KiB", "MiB", "GiB", "TiB")

CONTROL_MAX = 64 * KIB
ERROR_TEXT_MAX = 20_000
ERROR_MESSAGE_MAX = 128 * KIB
CUSTOM_CONF_MAX = 16 * MIB
JOB_MAX = 64 * MIB
JOB_MIN = 64 * KIB
PIPE_MAX = JOB_MAX
DELTA_MAX = 4 * MIB
FINAL_MAX = 16 * MIB
STATS_SOCKET_MAX = 8 * MIB
CONFIG_FILE_MAX = 4 * MIB
# What a control socket accepts beyond an agent's --max-message (headers, the largest
# non-job message): the job itself is checked against the limit before decoding.
SOCKET_SLACK = FINAL_MAX

__all__ = [
    "CONFIG_FILE_MAX",
    "CONTROL_MAX",
    "CUSTOM_CONF_MAX",
    "DELTA_MAX",
    "ERROR_MESSAGE_MAX",
    "ERROR_TEXT_MAX",
    "FINAL_MAX",
    "JOB_MAX",
    "JOB_MIN",
    "KIB",
    "MIB",
    "PIPE_MAX",
    "SOCKET_SLACK",
    "STATS_SOCKET_MAX",
    "format_size",
]


def format_size(n: int, spec: str = ".4g") -> str:
    """``n`` bytes for a person: 512 B, 64 KiB, 1.5 MiB, 2 GiB; ``spec`` formats the
    number (``".1f"`` for aligned columns: 64.0 KiB)."""
    if n < KIB:
        return f"{n} B"
    value = n / KIB
    for unit in _UNITS[:-1]:
        if value < KIB:
            return f"{value:{spec}} {unit}"
        value /= KIB
    return f"{value:{spec}} {_UNITS[-1]}"
