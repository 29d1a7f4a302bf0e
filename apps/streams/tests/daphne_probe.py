"""A tiny ASGI app behind `transport.expose_transport` (so daphne runs with
the streams' replacement of its connection upkeep) whose paths misbehave on
purpose: the upkeep tests watch daphne reap, kill and time them out."""

import asyncio
import json

from apps.streams.transport import _upkeep, expose_transport


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
        await send({"type": "websocket.send", "text": json.dumps(counts)})
    while (await receive())["type"] != "websocket.disconnect":
        pass
    if path == "/linger":  # outlives its disconnect: daphne must cancel it
        await asyncio.sleep(3600)


application = expose_transport(_probe)
