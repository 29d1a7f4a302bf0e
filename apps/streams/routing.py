from django.urls import re_path

from stocktracker.lib import catalogue

from .consumers import StreamConsumer

websocket_urlpatterns = [
    re_path(rf"^ws/{stream}/?$", StreamConsumer.as_asgi(stream=stream)) for stream in catalogue.STREAMS
]
