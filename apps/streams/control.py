"""Per-process control subscriptions: the token, user and session groups of
this process's sockets, and staff kicks addressed to this process.

Senders use the channel layer as usual: `live` sends `token.recheck`,
`user.recheck` and `session.end` to a group per token, user or signed-in
session (`keys.token_group` etc.), the admin sends `session.close` to the
channel recorded in a socket's live-session entry. This module gives the
process one channel of its own; that channel joins each control group that has
at least one local socket (one subscription per group per process, dropped
when the last local member leaves) and is the address of every local socket
for kicks (with the socket's `conn_id` in the message). Each message is handed
to the members' own handlers (`HANDLERS`): consumers decide what it means.

A join returns once the subscription is confirmed: a probe sent to the group
has come back, so anything published to the group from then on reaches this
process. Every event of a group (its confirmation, each message) moves the
process's `clock`; a connect reads `mark()` before its credential check and
`changed_since(groups, mark)` after joining tells it whether a change may have
gone by in between (then it re-checks instead of trusting the check).
"""

import asyncio
import logging
import secrets

from channels.layers import get_channel_layer

from stocktracker.lib import keys
from stocktracker.lib.aio import PerLoop, running

log = logging.getLogger("apps.streams")

RETRY = 1.0  # seconds before a failed receive is retried
CONFIRM_TIMEOUT = 3.0  # a subscription not confirmed by then fails (the connect gets 1013)
PROBE = "control.probe"
# Message type -> the consumer method that handles it. Nothing else is dispatched.
HANDLERS = {
    "token.recheck": "token_recheck",
    "user.recheck": "user_recheck",
    "session.end": "session_end",
    "session.close": "session_close",
}


def groups_of(grant):
    """The control groups a socket of `grant` joins."""
    groups = [keys.user_group(grant.user_id)]
    if grant.token_id is not None:
        groups.append(keys.token_group(grant.token_id))
    elif grant.session is not None:
        groups.append(keys.session_group(grant.session))
    return groups


class Group:
    __slots__ = ("last", "members", "ready")

    def __init__(self):
        self.members = set()
        self.ready = None  # task: subscribed and confirmed
        self.last = 0  # clock at this group's latest event


class Control:
    def __init__(self):
        self.layer = get_channel_layer()
        self.channel = None  # this process's channel
        self.groups = {}  # group name -> Group
        self.conns = {}  # conn_id -> consumer, for kicks
        self.clock = 0
        self.probes = {}  # nonce -> future set when the probe comes back
        self.leaving = {}  # group name -> its unsubscribe task
        self.tasks = set()
        self.lock = asyncio.Lock()
        self.receiver = None

    def mark(self):
        return self.clock

    def changed_since(self, names, mark):
        """True if a group in `names` was confirmed or had a message after `mark`."""
        return any(self.groups[name].last > mark for name in names if name in self.groups)

    async def join(self, consumer, names):
        """Add `consumer` to the groups `names`; returns once this process's
        subscription to each is confirmed. Raises what the channel layer raises
        (or TimeoutError); the consumer's groups are recorded first, so its
        `leave()` undoes a join that failed half-way."""
        channel = await self._channel()
        self.conns[consumer.conn_id] = consumer
        waits = []
        for name in names:
            group = self.groups.get(name)
            if group is None:
                group = self.groups[name] = Group()
                group.ready = asyncio.ensure_future(self._subscribe(name, group, channel))
            group.members.add(consumer)
            consumer.control_groups.append(name)
            waits.append(asyncio.shield(group.ready))
        await asyncio.gather(*waits)

    def leave(self, consumer):
        """Drop `consumer` from its groups; a group left without local members
        is unsubscribed in the background. Never waits on Redis."""
        if self.conns.get(getattr(consumer, "conn_id", None)) is consumer:
            del self.conns[consumer.conn_id]
        for name in getattr(consumer, "control_groups", ()):
            group = self.groups.get(name)
            if group is None:
                continue
            group.members.discard(consumer)
            if not group.members:
                del self.groups[name]
                # After a subscribe still in flight, never before it (it would undo the unsubscribe).
                self.leaving[name] = self._spawn(self._unsubscribe(name, (self.leaving.get(name), group.ready)))
        consumer.control_groups = []

    # --- subscriptions -------------------------------------------------------------

    async def _channel(self):
        if self.channel is None:
            async with self.lock:
                if self.channel is None:
                    self.channel = await self.layer.new_channel(keys.CONTROL_CHANNEL)
        if self.receiver is None or self.receiver.done():
            self.receiver = asyncio.ensure_future(self._receive())
        return self.channel

    async def _subscribe(self, name, group, channel):
        pending = self.leaving.get(name)
        if pending is not None:  # the previous subscription's unsubscribe must not undo this one
            await asyncio.wait({pending})
        nonce = secrets.token_hex(8)
        back = self.probes[nonce] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await self.layer.group_add(name, channel)
                await self.layer.group_send(name, {"type": PROBE, "group": name, "nonce": nonce})
                await back
        except BaseException:
            if self.groups.get(name) is group:  # the next join tries afresh
                del self.groups[name]
                self.leaving[name] = self._spawn(self._unsubscribe(name, ()))
            raise
        finally:
            self.probes.pop(nonce, None)

    async def _unsubscribe(self, name, previous):
        earlier = {task for task in previous if task is not None and task is not asyncio.current_task()}
        if earlier:
            await asyncio.wait(earlier)
        try:
            if name not in self.groups:
                async with asyncio.timeout(CONFIRM_TIMEOUT):
                    await self.layer.group_discard(name, self.channel)
        except Exception as exc:  # noqa: BLE001 - best effort: a lost Redis connection drops it anyway
            log.debug("control unsubscribe failed group=%s: %s", name, exc)
        finally:
            if self.leaving.get(name) is asyncio.current_task():
                del self.leaving[name]

    def _spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # --- messages ----------------------------------------------------------------------

    async def _receive(self):
        while running():
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the layer lost Redis; the watchdog handles the sockets
                log.warning("control receive failed: %s; retrying", exc)
                await asyncio.sleep(RETRY)
                continue
            try:
                self.handle(message)
            except Exception:
                log.exception("control message failed type=%s", message.get("type"))

    def handle(self, message):
        kind = message.get("type")
        if kind == PROBE:
            back = self.probes.get(message.get("nonce"))
            if back is not None and not back.done():  # ours (other processes probe the group too)
                self._touch(message.get("group"))
                back.set_result(None)
            return
        method = HANDLERS.get(kind)
        if method is None:
            log.debug("ignored control message type=%s", kind)
            return
        if "conn" in message:
            found = self.conns.get(message["conn"])
            targets = [found] if found is not None else []
        else:
            name = message.get("group")
            self._touch(name)
            group = self.groups.get(name)
            targets = list(group.members) if group is not None else []
        if targets:
            self._spawn(self._dispatch(targets, method, message))

    def _touch(self, name):
        group = self.groups.get(name)
        if group is not None:
            self.clock += 1
            group.last = self.clock

    @staticmethod
    async def _dispatch(targets, method, message):
        calls = [getattr(consumer, method)(message) for consumer in targets if not consumer.closing]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("control handler failed type=%s", message.get("type"), exc_info=outcome)


_controls = PerLoop(Control)


def control() -> Control:
    """The control subscriptions of this event loop (one per daphne process)."""
    return _controls.get()
