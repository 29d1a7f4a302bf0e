"""Token checks for the streams: the only API the socket side uses.

`check_token` runs on every connect; `recheck_token` on every live-effect
message and periodic re-check. Both return a `TokenCheck`: a grant, or the
reason the token may not be used ('bad', 'revoked', 'retired', 'expired',
'stream'). Accounts knows nothing of sockets; streams maps reasons to codes.
"""

from dataclasses import dataclass

from channels.db import database_sync_to_async


@dataclass(frozen=True)
class TokenCheck:
    reason: str | None = None  # None: allowed
    token_id: int | None = None
    token_prefix: str | None = None
    user_id: int | None = None
    username: str | None = None
    token_max_connections: int | None = None
    user_max_connections: int | None = None

    @property
    def ok(self):
        return self.reason is None


@database_sync_to_async
def _load(raw=None, token_id=None, stream=None):
    from .models import ApiToken, UserLimits

    if token_id is not None:
        token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    else:
        token = ApiToken.objects.find(raw)
    if token is None:
        return TokenCheck(reason="bad" if token_id is None else "revoked")
    reason = token.rejection(stream)
    limits = UserLimits.for_user(token.user)
    return TokenCheck(
        reason=reason,
        token_id=token.id,
        token_prefix=token.prefix,
        user_id=token.user_id,
        username=token.user.get_username(),
        token_max_connections=token.max_connections,
        user_max_connections=limits.max_connections,
    )


async def check_token(raw, stream, ip=None) -> TokenCheck:
    """Is `raw` a usable token for `stream`? Called on every connect."""
    return await _load(raw=raw, stream=stream)


async def recheck_token(token_id, stream) -> TokenCheck:
    """Fresh check of an open socket's token (never answered from a stale cache)."""
    return await _load(token_id=token_id, stream=stream)


@database_sync_to_async
def user_max_connections(user_id) -> int:
    from django.contrib.auth import get_user_model

    from .models import UserLimits

    return UserLimits.for_user(get_user_model().objects.get(pk=user_id)).max_connections
