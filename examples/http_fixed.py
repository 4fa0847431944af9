"""The fastest HTTP load test: one fixed request, declared, not made in `execute()`.

Run it with:

    loadmaster run -f conf/examples/http_fixed.yml

`FixedRequest` sends the same request every call (here to the config's URL) and counts
a call as a success on a 2xx status. It makes the figures `examples/http_fast.py` makes,
but in the closed model with no wait time the worker drives each client's calls from
its connection's callbacks, with no coroutine, future or response object a call: as
wrk does, and close to its speed. To read responses or vary requests, write an
`execute()` as `examples/http_fast.py` does.

Keys of the YAML config that are not system keys reach `global_init`:

    method: POST                        # default GET
    test_data_file: ./data/data2.json   # optional: the request body, read once
"""

from __future__ import annotations

from typing import Any

from protocol.http import FixedRequest


class HttpFixed(FixedRequest):
    @staticmethod
    def global_init(custom_conf: dict[str, Any] | None = None) -> None:
        conf = custom_conf or {}
        HttpFixed.method = str(conf.get("method", "GET")).upper()
        data_file = conf.get("test_data_file")
        if data_file:
            # Relative paths work on remote agents too: the file is shipped with the job.
            with open(data_file, "rb") as f:
                HttpFixed.body = f.read()
            HttpFixed.headers = {"Content-Type": "text/plain"}
