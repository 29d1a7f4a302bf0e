from django.urls import path

from . import api, health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("api/v1/snapshot/<str:stream>", api.snapshot, name="snapshot"),
]
