"""An HTTP load test with the built-in fast client, `protocol.http.HttpClient`.

Each simulated client holds one keep-alive connection and sends one request per
`execute()` call. Run it with:

    loadmaster run -f conf/examples/http_fast.yml

Keys of the YAML config that are not system keys reach `global_init`:

    method: POST                        # default GET
    test_data_file: ./data/data2.json   # optional: the request body, read once

Compared with examples/http_post.py (aiohttp), the request is built once and
cached, and a response costs a few microseconds of CPU, so one worker core
drives several times more requests per second.
"""

from __future__ import annotations

from typing import Any

from protocol import ClientProtocol
from protocol.http import HttpClient, HttpStatusError


class HttpFast(ClientProtocol):
    # Shared by every client of the worker process, set once by global_init.
    method: str = "GET"
    body: bytes | None = None

    def __init__(self) -> None:
        super().__init__()
        self._client: HttpClient | None = None

    @staticmethod
    def global_init(custom_conf: dict[str, Any] | None = None) -> None:
        conf = custom_conf or {}
        HttpFast.method = str(conf.get("method", "GET")).upper()
        data_file = conf.get("test_data_file")
        if data_file:
            # Relative paths work on remote agents too: the file is shipped with the job.
            with open(data_file, "rb") as f:
                HttpFast.body = f.read()

    def init_before_use(self, host: str) -> None:
        # `host` is the config's full URL, e.g. http://127.0.0.1:8080/test; its path is
        # the default request path. No connection yet: the first request opens it.
        headers = {"Content-Type": "text/plain"} if self.body is not None else None
        self._client = HttpClient(host, headers=headers)

    async def execute(self) -> None:
        assert self._client is not None
        resp = await self._client.request(self.method, body=self.body)
        # Responses are returned whatever their status: a non-2xx must raise to count
        # as a failure. raise_for_status() covers 4xx and 5xx; redirects are not followed.
        if not 200 <= resp.status < 300:
            resp.raise_for_status()
            raise HttpStatusError(f"{resp.method} {resp.url} returned {resp.status}",
                                  url=resp.url, response=resp)

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.close()
