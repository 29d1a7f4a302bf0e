"""Minimal stocktracker stream client (Python 3.11+, `pip install websockets`).

    STK_TOKEN=stk_... python docs/client_example.py wss://host/ws/market

Acts on close codes by range, so it also does the right thing with codes it
does not know: 40xx stop (fix the token or client), 41xx and 1013 back off
with full jitter (never sooner than an `error` frame's `retry_after`), 42xx
reconnect at once (with a little jitter).
"""

import asyncio
import json
import os
import random
import sys

import websockets

STOP = range(4000, 4100)  # 4001 bad token, 4003 forbidden, 4004 revoked, 4005 expired, 4008 abuse, 4009 kicked
RECONNECT_NOW = range(4200, 4300)  # 4200 server restarting
BASE, CAP = 0.5, 30.0  # seconds


def backoff(attempt):
    """AWS 'full jitter': uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(CAP, BASE * 2**attempt))


async def stream(url, token):
    attempt = 0
    while True:
        wait_at_least = 0  # seconds the server asked for (`retry_after`, e.g. with 4101)
        try:
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                async for text in ws:
                    frame = json.loads(text)
                    if frame["type"] == "welcome":
                        attempt = 0
                    elif frame["type"] == "snapshot":
                        print(frame["stream"], frame["epoch"], frame["seq"], frame["feed"])
                    elif frame["type"] == "feed":
                        print("feed is", frame["state"], frame.get("detail", ""))
                    elif frame["type"] == "error":
                        print("server says:", frame["code"], frame["message"], file=sys.stderr)
                        wait_at_least = frame.get("retry_after", 0)
                    # heartbeats need no answer: the library answers protocol pings itself
            code = ws.close_code
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosedError) as exc:
            code = getattr(getattr(exc, "rcvd", None), "code", None)
        if code in STOP:
            sys.exit(f"closed with {code}: not retrying")
        delay = random.uniform(0, 1) if code in RECONNECT_NOW else backoff(attempt)
        delay = max(delay, wait_at_least + random.uniform(0, 1))
        attempt += 1
        print(f"closed with {code}; reconnecting in {delay:.1f} s", file=sys.stderr)
        await asyncio.sleep(delay)


if __name__ == "__main__":
    asyncio.run(stream(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/ws/market", os.environ["STK_TOKEN"]))
