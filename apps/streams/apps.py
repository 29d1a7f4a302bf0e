from django.apps import AppConfig


class StreamsConfig(AppConfig):
    name = "apps.streams"
    label = "streams"
    verbose_name = "Streams"

    def ready(self):
        from .live import connect_receivers

        connect_receivers()
