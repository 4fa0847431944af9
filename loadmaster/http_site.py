"""The master's small HTTP servers (the dashboard, /metrics): an aiohttp runner on the
master's own event loop, and a listening socket made here, so the port bound (0: any
free one) is known and an IPv6 host works."""

from __future__ import annotations

import socket

from aiohttp import web

__all__ = ["bind_site", "new_runner"]


def new_runner(app: web.Application) -> web.AppRunner:
    """A runner for ``app``: no access log, no signal handlers (the run owns them)."""
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)


async def bind_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Listen on ``host:port`` and serve ``runner`` (set up) there; the port bound.
    OSError when it cannot bind (the socket is closed again)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    await web.SockSite(runner, sock).start()
    return int(sock.getsockname()[1])
