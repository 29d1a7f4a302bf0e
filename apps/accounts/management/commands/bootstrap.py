"""First-run set-up for `make run`: a staff user and one API token, shown once.

Does nothing when a staff user already exists, so the credentials are
printed exactly once per database and never again.
"""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from apps.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Create a staff user and an API token if no staff user exists; print them once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Where the site will be served.")

    def handle(self, *args, username, url, **options):
        users = get_user_model()
        if users.objects.filter(is_staff=True).exists():
            self.stdout.write("bootstrap: a staff user exists already; nothing to do.")
            return
        password = secrets.token_urlsafe(12)
        user = users.objects.create_superuser(username, f"{username}@localhost", password)
        _, raw = ApiToken.issue(user, label="created by make run")
        ws_url = "ws" + url.removeprefix("http")
        self.stdout.write(
            self.style.SUCCESS("\nFirst run: created a staff user and an API token. They are shown only now.\n")
            + f"  login:     {url}/accounts/login/  user {username}  password {password}\n"
            + f"  API token: {raw}\n"
            + f"  try it:    STK_TOKEN=<the token> .venv/bin/python docs/client_example.py {ws_url}/ws/market\n"
        )
