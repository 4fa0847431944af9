"""How ``loadmaster run`` was asked to run (the CLI's options), and how a run fails."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadmaster.dashboard import DashOptions
from loadmaster.outputs import Outputs
from protocol.security import KeyPair
from protocol.wire.channel import CONTROL_PORT

__all__ = ["MasterKeys", "RunFailed", "RunOptions"]


@dataclass
class RunOptions:
    bind_host: str = "127.0.0.1"
    bind_port: int = CONTROL_PORT
    cpu_list: str = ""
    # the result file (--out) and the reports (--html, --csv, --json), checked by the CLI
    outputs: Outputs = field(default_factory=Outputs)
    mask: tuple[str, ...] = ()  # config keys hidden in it (--mask), beyond the secret words
    dash: DashOptions = field(default_factory=DashOptions)  # the live dashboard
    metrics: tuple[str, int] | None = None  # where /metrics is served (--metrics)
    metrics_keep: float = 0.0  # seconds /metrics stays up after the run (--metrics-keep)
    quiet: bool = False  # only the final block (--quiet)
    keys: MasterKeys | None = None  # CURVE (--key, --authorized-agents); None: plaintext
    insecure: bool = False  # --insecure: a non-loopback bind without keys, as asked


@dataclass(frozen=True)
class MasterKeys:
    """The master's key pair and the agents' public keys it accepts (key -> file name)."""

    pair: KeyPair
    allowed: dict[bytes, str]


class RunFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.detail = ""  # shown before the message (the user's traceback), kept in --out
