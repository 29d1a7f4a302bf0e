"""ASGI entry point: HTTP through the probes and Django; websockets through the daphne port,
session auth (cookie handshakes only) and admission to the streams."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")
django_asgi_app = get_asgi_application()  # first: loads settings and apps

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from apps.feed.embedded import EmbeddedFeed  # noqa: E402
from apps.streams.admission import guard  # noqa: E402
from apps.streams.health import probes  # noqa: E402
from apps.streams.port import expose_transport  # noqa: E402
from apps.streams.routing import websocket_urlpatterns  # noqa: E402
from apps.streams.signin import session_auth_when_cookie  # noqa: E402

application = EmbeddedFeed(
    ProtocolTypeRouter(
        {
            "http": probes(django_asgi_app),
            # Outermost: sees daphne's own `send` (back-pressure and protocol pings).
            "websocket": expose_transport(session_auth_when_cookie(guard(URLRouter(websocket_urlpatterns)))),
        }
    )
)
