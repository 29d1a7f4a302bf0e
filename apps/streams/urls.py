from django.urls import path

from . import api, health

# /healthz, /readyz and /status are answered in front of Django: health.probes (asgi.py).
urlpatterns = [
    path("metrics", health.metrics, name="metrics"),
    path("api/v1/snapshot/<str:stream>", api.snapshot, name="snapshot"),
    path("api/v2/snapshot", api.topic_snapshot, name="topic_snapshot"),
]
