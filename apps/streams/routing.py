from django.urls import re_path

from stocktracker.lib import catalogue

from .consumers import StreamConsumer
from .links import link_for


async def unknown_path(scope, receive, send):
    """Any other websocket path: a plain 404 at the handshake (URLRouter would
    raise, and daphne answer 500 with a traceback in the log)."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):  # the ASGI denial response
        await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b""})
        return
    link = link_for(scope)
    if link is None or not link.deny(404, "Not Found"):
        await send({"type": "websocket.close"})  # the server's own refusal (403)


websocket_urlpatterns = [
    *(re_path(rf"^ws/{stream}/?$", StreamConsumer.as_asgi(stream=stream)) for stream in catalogue.STREAMS),
    re_path(r"", unknown_path),  # last
]
