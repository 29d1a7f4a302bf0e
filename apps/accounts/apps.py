from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "API access"

    def ready(self):
        from .sessions import connect_receivers

        connect_receivers()
