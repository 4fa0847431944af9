"""The master's ZAP handler: only the authorized agents' keys get through CURVE.

pyzmq's asyncio authenticator runs in the master's loop and context, so it guards both
sockets (control and stats): an unknown key fails the handshake before any message is
read. Each refused key is logged once, by its fingerprint.
"""

from __future__ import annotations

import logging

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from protocol.security import fingerprint

__all__ = ["AgentAuth"]

log = logging.getLogger("loadmaster")
MAX_REMEMBERED = 1000  # refused keys logged; a peer making up keys gets no more lines


class AgentAuth:
    """Accepts the CURVE client keys of ``allowed`` (public key -> what it is called)."""

    def __init__(self, ctx: zmq.asyncio.Context, allowed: dict[bytes, str]) -> None:
        self.allowed = dict(allowed)
        self.refused: set[bytes] = set()
        self._auth = AsyncioAuthenticator(ctx, log=logging.getLogger("loadmaster.zap"))

    def start(self) -> None:
        """Serve ZAP requests (before any CURVE socket binds)."""
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self)

    def stop(self) -> None:
        self._auth.stop()

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials provider: whether the client key ``key`` (Z85) may in."""
        if key in self.allowed:
            return True
        if key not in self.refused and len(self.refused) < MAX_REMEMBERED:
            self.refused.add(key)
            log.warning("refused a peer whose key %s is not in --authorized-agents",
                        fingerprint(key))
            if len(self.refused) == MAX_REMEMBERED:
                log.warning("%d keys refused: more are refused without a word",
                            MAX_REMEMBERED)
        return False
