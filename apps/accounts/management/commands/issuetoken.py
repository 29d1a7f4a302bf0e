"""manage.py issuetoken USER [--streams market,index] [--expires 90d|12h|2w|2027-06-30|never]
[--label X] [--max-connections N]

Prints the token alone on stdout (so `TOKEN=$(manage.py issuetoken bot)` works)
and a summary on stderr. It is never logged or stored; this is the only time
it is shown.
"""

import re
from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.accounts.forms import _end_of_day
from apps.accounts.models import ALL_STREAMS, MAX_EXPIRY_DAYS, NEVER, ApiToken

_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(value):
    """'never', '90d', '12h', '2w' or an ISO date (the last day the token works)
    -> kwargs for ApiToken.issue."""
    value = value.strip().lower()
    if value == "never":
        return {"expires_in": NEVER}
    match = _DURATION.match(value)
    if match:
        delta = timedelta(**{_UNITS[match[2]]: int(match[1])})
        if not timedelta(0) < delta <= timedelta(days=MAX_EXPIRY_DAYS):
            raise CommandError(f"--expires must be between 1h and {MAX_EXPIRY_DAYS}d")
        return {"expires_in": delta}
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--expires {value!r}: use e.g. 90d, 12h, 2w, 2027-06-30 or never") from None
    if _end_of_day(day) <= timezone.now():
        raise CommandError("--expires date is in the past")
    return {"expires_at": _end_of_day(day)}


class Command(BaseCommand):
    help = "Issue an API token for USER and print it once."

    def add_arguments(self, parser):
        parser.add_argument("user", help="username of the token's owner")
        parser.add_argument("--streams", help=f"comma-separated, from {','.join(ALL_STREAMS)} (default: the owner's)")
        parser.add_argument("--expires", help="90d, 12h, 2w, a date (YYYY-MM-DD) or never (default: the owner's)")
        parser.add_argument("--label", default="issued from the command line")
        parser.add_argument("--max-connections", type=int, help="default: the owner's default for new tokens")

    def handle(self, *args, **options):
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(options["user"])
        except User.DoesNotExist:
            raise CommandError(f"no user {options['user']!r}") from None
        if not user.is_active:
            raise CommandError(f"user {options['user']!r} is inactive")
        streams = None
        if options["streams"]:
            streams = [s.strip() for s in options["streams"].split(",") if s.strip()]
            unknown = sorted(set(streams) - set(ALL_STREAMS))
            if unknown or not streams:
                raise CommandError(
                    f"--streams: unknown {', '.join(unknown) or '(none given)'}; use {','.join(ALL_STREAMS)}"
                )
        if options["max_connections"] is not None and options["max_connections"] < 1:
            raise CommandError("--max-connections must be at least 1")
        expiry = parse_expiry(options["expires"]) if options["expires"] else {}
        try:
            token, plaintext = ApiToken.issue(
                user,
                label=options["label"][:100],
                streams=streams,
                max_connections=options["max_connections"],
                **expiry,
            )
        except (ValueError, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(plaintext)
        expires = timezone.localtime(token.expires_at).isoformat() if token.expires_at else "never"
        self.stderr.write(
            f"Issued {token.prefix}… for {user.get_username()}: streams {','.join(token.streams)}, "
            f"max {token.max_connections} connections, expires {expires}. "
            "Store the token now: it cannot be shown again."
        )
