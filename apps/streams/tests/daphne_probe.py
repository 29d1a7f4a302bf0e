"""A tiny ASGI app behind `port.expose_transport` (so daphne runs with
the streams' replacement of its connection upkeep) whose paths misbehave on
purpose: the upkeep tests watch daphne reap, kill and time them out.

Automatic garbage collection is off in this process: what /count reports as
still alive after its socket closed is held by a reference cycle (or a leak),
which the production process would keep once the watchdog froze it."""

import asyncio
import gc
import json

from daphne.ws_protocol import WebSocketProtocol

from apps.streams.port import _upkeep, expose_transport


async def _probe(scope, receive, send):
    if scope["type"] != "websocket":
        return
    path = scope["path"]
    await receive()  # websocket.connect
    if path == "/never":  # never accepts: daphne's handshake timeout must reject it
        await asyncio.sleep(3600)
    await send({"type": "websocket.accept"})
    if path == "/raise":
        raise RuntimeError("probe failure")
    if path == "/count":
        server = send.func.__self__  # daphne's Server (send = partial(server.handle_reply, protocol))
        upkeep = _upkeep(server)
        counts = {"connections": len(server.connections), **{k: len(upkeep[k]) for k in ("changed", "opening")}}
        closed = [o for o in gc.get_objects() if isinstance(o, WebSocketProtocol) and o.state == o.STATE_CLOSED]
        counts["closed_alive"] = len(closed)
        await send({"type": "websocket.send", "text": json.dumps(counts)})
    while (await receive())["type"] != "websocket.disconnect":
        pass
    if path == "/linger":  # outlives its disconnect: daphne must cancel it
        await asyncio.sleep(3600)


gc.disable()
application = expose_transport(_probe)
