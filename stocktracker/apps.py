from django.apps import AppConfig


class StocktrackerConfig(AppConfig):
    """The project package as an app, so its cross-cutting system checks register."""

    name = "stocktracker"
    verbose_name = "stocktracker"

    def ready(self):
        from . import checks  # noqa: F401 - registers the checks
