"""The bare aiohttp baseline: the seed client's request in a plain loop, no load tester.

    python bench/_aiohttp_loop.py URL USERS DURATION DATA_FILE

On uvloop, USERS tasks each own a `ClientSession` (as each seed client does)
and POST the data file's text to URL with `content-type: text/plain`, reading
the whole response, until DURATION seconds have passed since the tasks were
started. Prints `started` when the tasks start, then one JSON line:
`{"responses": N, "errors": E, "elapsed": S}` where N counts the 200s, E
everything else, and S runs from the start to the end of the last call.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import uvloop


async def client(url: str, body: str, deadline: float, counts: list[int]) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     headers={"content-type": "text/plain"}) as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=body) as response:
                    await response.text()
                    counts[0 if response.status == 200 else 1] += 1
            except aiohttp.ClientError:
                counts[1] += 1


async def main(url: str, users: int, duration: float, data_file: str) -> None:
    with open(data_file) as f:
        body = f.read()
    counts = [0, 0]
    start = time.monotonic()
    deadline = start + duration
    print("started", flush=True)
    # A call still running at the deadline finishes; the timeout only bounds a hung target.
    await asyncio.wait_for(
        asyncio.gather(*(client(url, body, deadline, counts) for _ in range(users))),
        timeout=duration + 30,
    )
    elapsed = time.monotonic() - start
    print(json.dumps({"responses": counts[0], "errors": counts[1], "elapsed": elapsed}),
          flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} URL USERS DURATION DATA_FILE")
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
