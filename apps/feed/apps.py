from django.apps import AppConfig


class FeedConfig(AppConfig):
    name = "apps.feed"
    label = "feed"
    verbose_name = "Feed"

    def ready(self):
        from . import metrics  # noqa: F401 - every process declares them, so /metrics lists them
