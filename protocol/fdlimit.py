"""Open-file limits: every process of ours raises its soft RLIMIT_NOFILE to the hard one.

A worker holds a connection per client, a master a connection per worker: the default
soft limit (often 1024) is far below what they need, while the hard limit (often
524288) is not. A plan that needs more than the hard limit is said so before the load
starts (``descriptor_shortfall``), and the calls that cannot open a connection then fail
with EMFILE, counted like any other error.
"""

from __future__ import annotations

import contextlib
import os
import resource

__all__ = ["descriptor_shortfall", "open_descriptors", "raise_open_files_limit"]

# descriptors a worker needs besides one per client: its sockets, pipes, the loop's own
MARGIN = 64


def raise_open_files_limit() -> int:
    """Raise the soft limit to the hard one (where allowed); return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_descriptors() -> int:
    """How many descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def descriptor_shortfall(clients: int, limit: int) -> int:
    """How many descriptors ``clients`` (one connection each) lack under ``limit``; 0 = none."""
    if limit == resource.RLIM_INFINITY or limit < 0:
        return 0
    needed = clients + open_descriptors() + MARGIN
    return max(0, needed - limit)
