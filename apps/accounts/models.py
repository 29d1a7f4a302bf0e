"""API tokens and per-user limits.

Every change to a token or a user's limits that can matter to an open socket
is announced on commit (`apps.accounts.signals`): `save()` compares the
watched fields with the values loaded from the database, so admin edits,
commands and the methods below all announce without extra care. Queryset
`.update()` bypasses that on purpose and is used only for `last_used_*`.
"""

import ipaddress
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import Case, Q, Value, When
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone

from stocktracker.lib import catalogue

from . import known, tokens
from .signals import announce

STREAM_CHOICES = list(catalogue.STREAM_CHOICES)
ALL_STREAMS = list(catalogue.STREAMS)

# A token that expires (or ends its rotation grace) within this window shows as "expiring".
EXPIRING_WINDOW = timedelta(days=7)
# last_used_at / last_used_ip are written at most this often per token.
LAST_USED_INTERVAL = timedelta(seconds=60)
MAX_EXPIRY_DAYS = 3650
NEVER = "never"  # ApiToken.issue(expires_in=NEVER): the only way to get a token that never expires

STATUSES = ("active", "expiring", "expired", "revoked")

# Field -> the `change` announced when it changes (see signals.CHANGES).
WATCHED_FIELDS = {
    "revoked_at": "revoked",
    "retires_at": "rotated",
    "expires_at": "expiry",
    "streams": "streams",
    "max_connections": "limits",
}


def default_streams():
    return list(ALL_STREAMS)


def normalise_streams(value):
    """The streams in `value`, deduplicated, in canonical order."""
    return [stream for stream in ALL_STREAMS if stream in value]


def validate_streams(value):
    if not isinstance(value, list | tuple) or not value:
        raise ValidationError("Choose at least one stream.")
    unknown = [stream for stream in value if stream not in ALL_STREAMS]
    if unknown:
        raise ValidationError(f"Unknown stream(s): {', '.join(map(str, unknown))}.")


def token_rejection(*, revoked_at, user_active, retires_at, expires_at, streams, stream=None, at=None):
    """Why a token with these values may not be used at `at` (None if it may):
    'revoked', 'retired', 'expired' or 'stream'. The one rule, shared by the
    model and the token cache."""
    at = at or timezone.now()
    if revoked_at is not None or not user_active:
        return "revoked"
    if retires_at is not None and retires_at <= at:
        return "retired"
    if expires_at is not None and expires_at <= at:
        return "expired"
    if stream is not None and stream not in streams:
        return "stream"
    return None


def clean_ip(value):
    """`value` if it is an IP address (what GenericIPAddressField accepts), else None."""
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


class TokenStateError(Exception):
    """The token cannot take this action in its current state (e.g. rotating a revoked token)."""


class UserLimits(models.Model):
    """Per-user connection cap and the defaults given to the user's new tokens."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")
    max_connections = models.PositiveIntegerField(
        "total connection cap",
        validators=[MinValueValidator(1)],
        help_text="Open sockets across all of this user's tokens and sessions.",
    )
    default_token_streams = models.JSONField(
        "default streams for new tokens", default=default_streams, validators=[validate_streams]
    )
    default_token_max_connections = models.PositiveIntegerField(
        "default max connections per new token", validators=[MinValueValidator(1)]
    )
    default_token_expiry_days = models.PositiveIntegerField(
        "default lifetime of new tokens (days)",
        validators=[MinValueValidator(1), MaxValueValidator(MAX_EXPIRY_DAYS)],
        help_text="A token that never expires can only be chosen explicitly, token by token.",
    )

    class Meta:
        verbose_name = verbose_name_plural = "user limits"

    def __str__(self):
        return f"limits for {self.user}"

    def save(self, *args, **kwargs):
        self.default_token_streams = normalise_streams(self.default_token_streams)
        cap_changed = not self._state.adding and self.max_connections != getattr(self, "_loaded_cap", None)
        super().save(*args, **kwargs)
        self._loaded_cap = self.max_connections
        if cap_changed:
            prefixes = ApiToken.objects.filter(user_id=self.user_id).values_list("prefix", flat=True)
            announce(prefixes=list(prefixes), users=[self.user_id])

    @classmethod
    def defaults(cls):
        return {
            "max_connections": settings.USER_DEFAULT_MAX_CONNECTIONS,
            "default_token_streams": default_streams(),
            "default_token_max_connections": settings.TOKEN_DEFAULT_MAX_CONNECTIONS,
            "default_token_expiry_days": settings.TOKEN_DEFAULT_EXPIRY_DAYS,
        }

    @classmethod
    def for_user(cls, user):
        limits, _ = cls.objects.get_or_create(user=user, defaults=cls.defaults())
        return limits

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._loaded_cap = instance.__dict__.get("max_connections")
        return instance


class ApiTokenQuerySet(models.QuerySet):
    def status_q(self, status, at=None):
        """A Q selecting tokens whose status at `at` is `status` (same rule as `ApiToken.status_at`)."""
        at = at or timezone.now()
        revoked = Q(revoked_at__isnull=False) | Q(retires_at__lte=at) | Q(user__is_active=False)
        expired = Q(expires_at__lte=at)
        expiring = Q(retires_at__isnull=False) | Q(expires_at__lte=at + EXPIRING_WINDOW)
        return {
            "revoked": revoked,
            "expired": ~revoked & expired,
            "expiring": ~revoked & ~expired & expiring,
            "active": ~revoked & ~expired & ~expiring,
        }[status]

    def with_status(self, at=None):
        at = at or timezone.now()
        return self.annotate(
            status=Case(
                *(When(self.status_q(status, at), then=Value(status)) for status in ("revoked", "expired", "expiring")),
                default=Value("active"),
                output_field=models.CharField(),
            )
        )

    def unused_q(self, at=None):
        """A Q selecting usable tokens not used for TOKEN_UNUSED_DAYS (never-used
        ones count from their creation)."""
        at = at or timezone.now()
        cutoff = at - timedelta(days=settings.TOKEN_UNUSED_DAYS)
        idle = Q(last_used_at__lte=cutoff) | Q(last_used_at__isnull=True, created_at__lte=cutoff)
        return idle & (self.status_q("active", at) | self.status_q("expiring", at))


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens", verbose_name="owner"
    )
    label = models.CharField(max_length=100, help_text="What uses this token, e.g. “desk bridge” or “partner X”.")
    prefix = models.CharField(max_length=tokens.LOOKUP_LEN, unique=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    streams = models.JSONField(default=default_streams, validators=[validate_streams])
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty means never.")
    max_connections = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set on the old token when it is rotated: it keeps working until then.
    retires_at = models.DateTimeField(null=True, blank=True, editable=False)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, editable=False, related_name="replaces"
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.prefix}… ({self.label})"

    def save(self, *args, **kwargs):
        self.streams = normalise_streams(self.streams or [])
        adding = self._state.adding
        changes = [] if adding else self.changes()
        super().save(*args, **kwargs)
        self._remember()
        if adding:
            known.learn_token_on_commit(self.prefix)  # its sign-ins never wait on an address's budget
        # A new prefix gets a generation too: a process that cached "unknown" for it reloads.
        announce(prefixes=[self.prefix], token_changes=[(self.pk, self.user_id, change) for change in changes])

    # --- change tracking --------------------------------------------------------------

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._remember()
        return instance

    def _remember(self):
        self._loaded = {name: self.__dict__[name] for name in WATCHED_FIELDS if name in self.__dict__}
        if "streams" in self._loaded:
            self._loaded["streams"] = list(self._loaded["streams"] or [])

    def refresh_from_db(self, *args, **kwargs):
        super().refresh_from_db(*args, **kwargs)
        self._remember()

    def changes(self):
        """The announced changes between the loaded values and the current ones."""
        loaded = getattr(self, "_loaded", {})
        return [
            change for name, change in WATCHED_FIELDS.items() if name in loaded and loaded[name] != getattr(self, name)
        ]

    # --- lifecycle ----------------------------------------------------------------------

    @classmethod
    def issue(cls, user, *, label, streams=None, expires_in=None, expires_at=None, max_connections=None, at=None):
        """Create a token; returns (token, plaintext). The plaintext exists only here.

        Expiry: `expires_at` (a datetime), else `expires_in` (a timedelta, or
        `NEVER` for a token that never expires), else the owner's default.
        """
        at = at or timezone.now()
        limits = UserLimits.for_user(user)
        if expires_at is None:
            if expires_in is None:
                expires_in = timedelta(days=limits.default_token_expiry_days)
            if expires_in != NEVER:
                if not isinstance(expires_in, timedelta) or expires_in <= timedelta(0):
                    raise ValueError("expires_in must be a positive timedelta or NEVER")
                expires_at = at + expires_in
        streams = normalise_streams(streams if streams is not None else limits.default_token_streams)
        validate_streams(streams)
        for attempt in range(3):
            raw = tokens.generate()
            token = cls(
                user=user,
                label=label,
                prefix=tokens.lookup_prefix(raw),
                digest=tokens.digest(raw),
                streams=streams,
                expires_at=expires_at,
                max_connections=max_connections or limits.default_token_max_connections,
                created_at=at,
            )
            try:
                with transaction.atomic():
                    token.save()
            except IntegrityError:
                # Two tokens sharing an 8-character lookup prefix: ~1 in 2**47. Draw again.
                if attempt == 2:
                    raise
                continue
            return token, raw
        raise AssertionError("unreachable")

    def revoke(self, at=None):
        """Revoke now. Open sockets close with 4004 (announced on commit)."""
        if self.revoked_at is None:
            self.revoked_at = at or timezone.now()
            self.save(update_fields=["revoked_at"])

    def rotate(self, grace, *, at=None, expires_in=None):
        """Issue the replacement of this token; returns (new_token, plaintext).

        The new token works at once. This one keeps working for `grace` (a
        timedelta; zero retires it at once) and then is refused as 'retired'.
        The new token gets the same streams, limits, label and lifetime
        (`expires_in` to choose another, NEVER included).
        """
        at = at or timezone.now()
        if grace < timedelta(0):
            raise ValueError("grace cannot be negative")
        with transaction.atomic():
            current = type(self).objects.select_for_update().select_related("user").get(pk=self.pk)
            if current.revoked_at is not None:
                raise TokenStateError("a revoked token cannot be rotated")
            if current.replaced_by_id is not None:
                raise TokenStateError("this token was already rotated; rotate its replacement instead")
            if expires_in is None:
                expires_in = (current.expires_at - current.created_at) if current.expires_at else NEVER
                if expires_in != NEVER:
                    expires_in = max(expires_in, timedelta(seconds=1))
            new, raw = type(self).issue(
                current.user,
                label=current.label,
                streams=current.streams,
                expires_in=expires_in,
                max_connections=current.max_connections,
                at=at,
            )
            current.retires_at = at + grace
            current.replaced_by = new
            current.save(update_fields=["retires_at", "replaced_by"])
        self.retires_at, self.replaced_by = current.retires_at, new
        self._remember()
        return new, raw

    def set_expiry(self, expires_at):
        """Move the expiry (None: never). Sockets see it at once (announced as 'expiry')."""
        self.expires_at = expires_at
        self.save(update_fields=["expires_at"])

    # --- state ----------------------------------------------------------------------

    def rejection(self, stream=None, at=None):
        """Why this token may not be used now (None if it may):
        'revoked', 'retired', 'expired' or 'stream'."""
        return token_rejection(
            revoked_at=self.revoked_at,
            user_active=self.user.is_active,
            retires_at=self.retires_at,
            expires_at=self.expires_at,
            streams=self.streams,
            stream=stream,
            at=at,
        )

    def is_unused(self, at=None):
        """Usable, but not used for TOKEN_UNUSED_DAYS: a candidate for revoking."""
        at = at or timezone.now()
        cutoff = at - timedelta(days=settings.TOKEN_UNUSED_DAYS)
        last = self.last_used_at or self.created_at
        return last <= cutoff and self.status_at(at) in ("active", "expiring")

    def status_at(self, at=None):
        """'active', 'expiring', 'expired' or 'revoked' (a finished rotation counts as revoked)."""
        at = at or timezone.now()
        reason = self.rejection(at=at)
        if reason in ("revoked", "retired"):
            return "revoked"
        if reason == "expired":
            return "expired"
        if self.retires_at is not None or (self.expires_at is not None and self.expires_at <= at + EXPIRING_WINDOW):
            return "expiring"
        return "active"

    @classmethod
    def touch(cls, token_id, ip, at=None):
        """Record a use. Writes only if the last recorded use is older than
        LAST_USED_INTERVAL (one conditional UPDATE, safe across processes).
        Returns True if it wrote."""
        at = at or timezone.now()
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lte=at - LAST_USED_INTERVAL)
        return bool(cls.objects.filter(stale, pk=token_id).update(last_used_at=at, last_used_ip=clean_ip(ip)))


# --- users: limits row on creation, announcements on changes -------------------------------


@receiver(post_delete, sender=ApiToken)
def _token_deleted(sender, instance, **kwargs):
    announce(prefixes=[instance.prefix], token_changes=[(instance.pk, instance.user_id, "revoked")])


@receiver(pre_save, sender=settings.AUTH_USER_MODEL)
def _remember_active_flag(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance.pk is None or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    instance._was_active = sender._default_manager.filter(pk=instance.pk).values_list("is_active", flat=True).first()


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def _user_saved(sender, instance, created, raw=False, update_fields=None, **kwargs):
    if raw:
        return
    if created:
        UserLimits.objects.get_or_create(user=instance, defaults=UserLimits.defaults())
        return
    was_active = instance.__dict__.pop("_was_active", None)
    if was_active is None or was_active == instance.is_active:
        return
    # Deactivating a user revokes every token in effect; reactivating restores them.
    tokens_ = list(ApiToken.objects.filter(user=instance).values_list("pk", "prefix"))
    changes = [] if instance.is_active else [(pk, instance.pk, "revoked") for pk, _ in tokens_]
    announce(prefixes=[prefix for _, prefix in tokens_], token_changes=changes, users=[instance.pk])


class TokenUsageQuerySet(models.QuerySet):
    def record(self, rows):
        """Add a batch of per-process counts: rows of {token_id, day, connections,
        peak, messages, bytes, rejections}. Counters are added with F()
        expressions and the peak kept with Greatest(), so processes flushing at
        the same time never lose each other's counts. Rows of tokens deleted
        meanwhile are dropped. Returns the number of rows written."""
        from django.db.models import F
        from django.db.models.functions import Greatest

        written = 0
        for row in rows:
            added = {name: row.get(name, 0) for name in ("connections", "messages", "bytes", "rejections")}
            peak = row.get("peak", 0)
            for _attempt in range(2):
                updated = self.filter(token_id=row["token_id"], day=row["day"]).update(
                    **{name: F(name) + value for name, value in added.items()},
                    peak_concurrent=Greatest(F("peak_concurrent"), peak),
                )
                if updated:
                    written += 1
                    break
                try:
                    with transaction.atomic():
                        self.create(token_id=row["token_id"], day=row["day"], peak_concurrent=peak, **added)
                    written += 1
                    break
                except IntegrityError:
                    # Another process created the row first (retry the update), or the token is gone.
                    if not ApiToken.objects.filter(pk=row["token_id"]).exists():
                        break
        return written

    def totals(self):
        from django.db.models import Max, Sum

        return self.aggregate(
            connections=Sum("connections"),
            peak=Max("peak_concurrent"),
            messages=Sum("messages"),
            bytes=Sum("bytes"),
            rejections=Sum("rejections"),
        )


class TokenUsage(models.Model):
    """What one token did on one day (Asia/Ho_Chi_Minh), added up from every process."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    connections = models.PositiveBigIntegerField("connections opened", default=0)
    peak_concurrent = models.PositiveIntegerField("peak concurrent", default=0)
    messages = models.PositiveBigIntegerField("messages delivered", default=0)
    bytes = models.PositiveBigIntegerField("bytes delivered", default=0)
    rejections = models.PositiveBigIntegerField(default=0)

    objects = TokenUsageQuerySet.as_manager()

    class Meta:
        ordering = ["-day"]
        verbose_name = verbose_name_plural = "token usage"
        constraints = [models.UniqueConstraint(fields=["token", "day"], name="token_usage_one_row_per_day")]

    def __str__(self):
        return f"{self.token_id} on {self.day}"
