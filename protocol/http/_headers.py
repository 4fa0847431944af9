"""Response headers, parsed from the raw bytes of the head only when someone asks.

The connection's parser defines no `on_header` callback: a call per header, and the
bytes and tuples it creates, cost more than the rest of a small response's parse, and
a load test rarely reads a header. The connection keeps the bytes it read up to the
end of the head instead (`raw`: the first read, usually the whole response), and
`parse_head` feeds them to a fresh parser that only collects the header pairs, once,
the first time `HttpResponse.headers` (or `header()`...) is read.

`raw` may start with interim 1xx responses (skipped, as the connection skipped them)
and may go on past the head into the body (never parsed here).
"""

from __future__ import annotations

from contextlib import suppress

import httptools

# A raw head longer than this is cut at the end of the head before the response keeps
# it, so that a response does not hold its body twice; shorter ones are kept as read.
KEEP_WHOLE = 4096
_HEAD_END = b"\r\n\r\n"


class _Collector:
    """The parser callbacks that collect the final response's header pairs."""

    __slots__ = ("headers", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.headers = []  # an interim response's: the final one follows
            return
        raise _HeadComplete  # stop here: what follows is the body


class _HeadComplete(Exception):
    pass


def parse_head(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The final response's `(name, value)` pairs in `raw`, in order, names as sent."""
    collector = _Collector()
    # Stopped at the end of the head (raised above), or by bytes after it that the
    # connection's own parser failed on too: the head itself parsed once already.
    with suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        collector.parser.feed_data(raw)
    return collector.headers


def head_only(raw: bytes) -> bytes:
    """`raw` without what follows the head, if it is long and holds one final head."""
    if len(raw) <= KEEP_WHOLE or raw[9:10] == b"1":
        return raw  # short, or an interim response first: kept whole
    end = raw.find(_HEAD_END)
    return raw if end < 0 else raw[: end + len(_HEAD_END)]


def body_ends_at_eof(raw: bytes) -> bool:
    """True if the response whose head is in `raw` is delimited by connection close."""
    for name, value in parse_head(raw):
        name = name.lower()
        if name == b"content-length":
            return False
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return False
    return True
