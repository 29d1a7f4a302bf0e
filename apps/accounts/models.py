import hmac
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from . import tokens

STREAM_CHOICES = [("market", "Market board"), ("foreign", "Foreign flow"), ("index", "Index board")]
ALL_STREAMS = [value for value, _ in STREAM_CHOICES]


def default_streams():
    return list(ALL_STREAMS)


class UserLimits(models.Model):
    """Per-user connection cap and the defaults given to the user's new tokens."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")
    max_connections = models.PositiveIntegerField(help_text="Open sockets across all of this user's tokens.")
    default_token_streams = models.JSONField(default=default_streams)
    default_token_max_connections = models.PositiveIntegerField()
    default_token_expiry_days = models.PositiveIntegerField(help_text="0 means new tokens never expire.")

    class Meta:
        verbose_name = verbose_name_plural = "user limits"

    def __str__(self):
        return f"limits for {self.user}"

    @classmethod
    def for_user(cls, user):
        limits, _ = cls.objects.get_or_create(
            user=user,
            defaults={
                "max_connections": settings.USER_DEFAULT_MAX_CONNECTIONS,
                "default_token_max_connections": settings.TOKEN_DEFAULT_MAX_CONNECTIONS,
                "default_token_expiry_days": settings.TOKEN_DEFAULT_EXPIRY_DAYS,
            },
        )
        return limits


class ApiTokenQuerySet(models.QuerySet):
    def find(self, raw):
        """The token matching `raw`, or None. Rejects malformed input with no query."""
        if not tokens.is_well_formed(raw):
            return None
        candidate = self.select_related("user").filter(prefix=tokens.lookup_prefix(raw)).first()
        if candidate is None or not hmac.compare_digest(candidate.digest, tokens.digest(raw)):
            return None
        return candidate


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    label = models.CharField(max_length=100)
    prefix = models.CharField(max_length=tokens.LOOKUP_LEN, unique=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    streams = models.JSONField(default=default_streams)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty means never.")
    max_connections = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set on the old token when it is rotated: it keeps working until then.
    retires_at = models.DateTimeField(null=True, blank=True, editable=False)
    replaced_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.label})"

    @classmethod
    def issue(cls, user, *, label, streams=None, expires_in=None, max_connections=None):
        """Create a token; returns (token, plaintext). The plaintext exists only here.

        `expires_in`: a timedelta, None for the user's default, or timedelta(0)
        for a token that never expires.
        """
        limits = UserLimits.for_user(user)
        if expires_in is None:
            days = limits.default_token_expiry_days
            expires_in = timedelta(days=days) if days else timedelta(0)
        raw = tokens.generate()
        token = cls.objects.create(
            user=user,
            label=label,
            prefix=tokens.lookup_prefix(raw),
            digest=tokens.digest(raw),
            streams=list(streams if streams is not None else limits.default_token_streams),
            expires_at=timezone.now() + expires_in if expires_in else None,
            max_connections=max_connections or limits.default_token_max_connections,
        )
        return token, raw

    def rejection(self, stream=None, at=None):
        """Why this token may not be used now (None if it may):
        'revoked', 'expired', 'retired' or 'stream'."""
        at = at or timezone.now()
        if self.revoked_at is not None or not self.user.is_active:
            return "revoked"
        if self.retires_at is not None and self.retires_at <= at:
            return "retired"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        if stream is not None and stream not in self.streams:
            return "stream"
        return None
