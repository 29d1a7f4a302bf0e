from django.urls import re_path

from . import consumers

websocket_urlpatterns = [
    re_path(r"^ws/market/?$", consumers.MarketConsumer.as_asgi()),
    re_path(r"^ws/foreign/?$", consumers.ForeignConsumer.as_asgi()),
    re_path(r"^ws/index/?$", consumers.IndexConsumer.as_asgi()),
]
