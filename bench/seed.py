"""Create (or refresh) the bench user and a fresh bench token through the ORM.

    DJANGO_SETTINGS_MODULE=stocktracker.settings python bench/seed.py --max-connections 20000

Prints one line `TOKEN {"token": ..., "prefix": ...}`. The limits are set
high enough that the bench's own connections never hit a user or token cap
(the per-IP cap is raised through WS_MAX_CONNECTIONS_PER_IP by run.py).
Earlier bench tokens are revoked so only one is live.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stocktracker.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from apps.accounts.models import ALL_STREAMS, NEVER, ApiToken, UserLimits  # noqa: E402

USERNAME = "bench"
LABEL = "bench"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-connections", type=int, default=20000)
    args = parser.parse_args()
    cap = args.max_connections
    user, created = get_user_model().objects.get_or_create(username=USERNAME, defaults={"is_active": True})
    if created:
        user.set_unusable_password()
        user.save()
    limits = UserLimits.for_user(user)
    limits.max_connections = cap
    limits.default_token_max_connections = cap
    limits.save()
    for old in ApiToken.objects.filter(user=user, label=LABEL, revoked_at__isnull=True):
        old.revoke()
    token, raw = ApiToken.issue(user, label=LABEL, streams=list(ALL_STREAMS), expires_in=NEVER, max_connections=cap)
    print("TOKEN " + json.dumps({"token": raw, "prefix": token.prefix, "max_connections": cap}), flush=True)


if __name__ == "__main__":
    main()
