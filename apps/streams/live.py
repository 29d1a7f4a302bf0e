"""Token, limit and session changes reach open sockets on every process.

Accounts sends `token_changed` / `user_limits_changed` after a commit, and
`session_ended` when a browser session is logged out or deleted; these
receivers turn them into one channel-layer message to the token's (user's,
session's) group, naming the group (`control` hands it to the group's
sockets on each process). Each socket there re-checks its token (or session)
and the caps and closes with the matching code; an ended session's sockets
close at once. A lost message is caught by the periodic re-check
(TOKEN_RECHECK_INTERVAL).
"""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from stocktracker.lib import keys

log = logging.getLogger("apps.streams")

TOKEN_RECHECK = "token.recheck"  # noqa: S105 - a message type; consumer handler: token_recheck
USER_RECHECK = "user.recheck"  # consumer handler: user_recheck
SESSION_END = "session.end"  # consumer handler: session_end


def _group_send(group, message):
    message = {**message, "group": group}
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        # Sync caller (admin view thread, command): hops onto the server's loop under ASGI.
        async_to_sync(layer.group_send)(group, message)
    else:
        task = loop.create_task(layer.group_send(group, message))
        task.add_done_callback(_report)


def _report(task):
    if not task.cancelled() and task.exception() is not None:
        log.warning("live token effect not delivered: %s", task.exception())


def on_token_changed(sender, token_id, user_id, change, **kwargs):
    _group_send(keys.token_group(token_id), {"type": TOKEN_RECHECK, "change": change})


def on_user_limits_changed(sender, user_id, **kwargs):
    _group_send(keys.user_group(user_id), {"type": USER_RECHECK})


def on_session_ended(sender, session_key, **kwargs):
    _group_send(keys.session_group(keys.session_name(session_key)), {"type": SESSION_END})


def connect_receivers():
    from apps.accounts.signals import session_ended, token_changed, user_limits_changed

    token_changed.connect(on_token_changed, dispatch_uid="streams.token_changed")
    user_limits_changed.connect(on_user_limits_changed, dispatch_uid="streams.user_limits_changed")
    session_ended.connect(on_session_ended, dispatch_uid="streams.session_ended")
