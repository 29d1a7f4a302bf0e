"""Browser sessions: does one still sign its user in, and until when; and the
announcements that one ended. Knows nothing of sockets.

A session stops signing its user in when it is logged out, deleted (from the
admin, `clearsessions`, a key rotation), expires, or no longer carries the
user's current session auth hash (the password changed). The first two are
announced (`signals.session_ended`, with the session key: in-process only);
a password change is announced as a change of the user
(`signals.user_limits_changed`), so every session of that user is checked
again; expiry is known in advance (`SessionCheck.expires_at`).
"""

from dataclasses import dataclass
from datetime import datetime
from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, user_logged_out
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from stocktracker.lib.dbthread import database_call

from .auth import _from_database
from .signals import announce, send_session_ended


@dataclass(frozen=True)
class SessionCheck:
    active: bool  # the user exists and is active
    signed_in: bool  # the session is live and still signs this user in
    user_max: int | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class SessionSignIn:
    """Who a session signs in: the user, whether they are active, their cap,
    and the session's expiry."""

    user_id: int
    username: str
    active: bool
    user_max: int | None
    expires_at: datetime | None


async def session_sign_in(session_key) -> SessionSignIn | None:
    """Who `session_key` signs in, or None when nobody: no such session, or
    it expired, was logged out, carries no user, or its user is gone or
    changed their password. The rules of `django.contrib.auth.get_user`,
    with the database timeouts: raises AccountsUnavailable when the database
    cannot answer. A forged key costs one query."""
    return await _from_database(_session_sign_in, session_key)


@database_call
def _session_sign_in(session_key):
    from django.contrib.auth import get_user_model

    data, expires_at = _load(session_key)
    if data is None or data.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
        return None
    model = get_user_model()
    try:
        user_id = model._meta.pk.to_python(data.get(SESSION_KEY))
    except ValidationError:
        return None
    user = model.objects.select_related("limits").filter(pk=user_id).first() if user_id is not None else None
    if user is None or not _hash_matches(data.get(HASH_SESSION_KEY), user):
        return None
    return SessionSignIn(user.pk, user.get_username(), user.is_active, _user_max(user), expires_at)


def _user_max(user):
    from .models import UserLimits

    try:
        return user.limits.max_connections
    except UserLimits.DoesNotExist:
        return settings.USER_DEFAULT_MAX_CONNECTIONS


async def session_check(session_key, user_id) -> SessionCheck:
    """Whether `session_key` still signs in user `user_id`, with the user's
    cap and the session's expiry. Raises AccountsUnavailable when the
    database cannot answer."""
    return await _from_database(_session_check, session_key, user_id)


@database_call
def _session_check(session_key, user_id):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.select_related("limits").filter(pk=user_id).first()
    if user is None or not user.is_active:
        return SessionCheck(active=False, signed_in=False)
    user_max = _user_max(user)
    data, expires_at = _load(session_key)
    signed_in = (
        data is not None
        and str(data.get(SESSION_KEY)) == str(user.pk)
        and BACKEND_SESSION_KEY in data
        and _hash_matches(data.get(HASH_SESSION_KEY), user)
    )
    return SessionCheck(
        active=True, signed_in=signed_in, user_max=user_max, expires_at=expires_at if signed_in else None
    )


def _load(session_key):
    """(session data, expiry) of a live session, or (None, None)."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if not session_key:
        return None, None
    model = getattr(store, "get_model_class", None)
    if model is not None:  # database-backed: the row's expiry is the truth
        # By its key alone (one index lookup), the expiry compared here.
        row = model().objects.filter(session_key=session_key).first()
        if row is None or row.expire_date <= timezone.now():
            return None, None
        return store.decode(row.session_data), row.expire_date
    data = store.load()
    if not data:
        return None, None
    return data, (store.get_expiry_date() if "_session_expiry" in data else None)


def _hash_matches(session_hash, user):
    # As django.contrib.auth.get_user: the current secret, then the fallbacks.
    if not session_hash:
        return False
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return True
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
    return fallbacks is not None and any(constant_time_compare(session_hash, h) for h in fallbacks())


# --- announcements --------------------------------------------------------------------------


def _logged_out(sender, request, user, **kwargs):
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        send_session_ended(session.session_key)


def _session_deleted(sender, instance, **kwargs):
    # Every deletion: logout's flush, the admin, `clearsessions` (which then
    # deletes row by row), a key rotation (the old key's row).
    key = instance.session_key
    transaction.on_commit(lambda: send_session_ended(key))


def _password_saved(sender, instance, created, raw=False, **kwargs):
    # set_password() leaves the new password in `_password` until save() is
    # done: a save that changes the password. Its sessions' auth hash changed.
    if not created and not raw and getattr(instance, "_password", None) is not None:
        announce(users=[instance.pk])


def connect_receivers():
    user_logged_out.connect(_logged_out, dispatch_uid="accounts.session_logged_out")
    post_delete.connect(_session_deleted, sender=Session, dispatch_uid="accounts.session_deleted")
    post_save.connect(_password_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="accounts.password_saved")
