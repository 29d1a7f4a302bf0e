"""Every name the processes share: lease sets, channel-layer groups and
channels, and the keys of shared state. Build them here, never with an
f-string at a call site (a test greps for that): two spellings of one key
would be two keys.

Three kinds of name:
- lease sets (`token(7)` -> "token:7"): what a connection counts against;
  `state.lease_acquire` keeps each under `lease_set(name)` in Redis;
- channel-layer groups and channels (`stream_group("market")` ->
  "stream.market"): where frames and control messages are sent;
- shared-state keys (`latest("market")` -> "stk:latest:market"): Redis keys,
  read by the state classes only.
"""

import hashlib

PREFIX = "stk:"

# --- lease sets --------------------------------------------------------------


def ip(address) -> str:
    """Sockets from one client address (IPv6 grouped by the caller)."""
    return f"ip:{address}"


def token(token_id) -> str:
    return f"token:{token_id}"


def user(user_id) -> str:
    return f"user:{user_id}"


def session(session_name) -> str:
    """Sockets of one signed-in browser session (`session_name`, never its key)."""
    return f"session:{session_name}"


def subscribers(stream) -> str:
    """Everything subscribed to a stream (sockets, page views, snapshot
    polls): the feed fetches only streams with a member."""
    return f"stream:{stream}"


TOPIC_SUBSCRIBERS = "topics"  # lease set of everything that follows a topic (v2 sockets, REST polls)


def viewer(member) -> str:
    """The lease member of a page view or snapshot poll of `member` (a
    `user(...)` or `token(...)` name): one per viewer, renewed by each view."""
    return f"viewer:{member}"


def kind_of(lease_name) -> str:
    """ "token" for "token:7": which cap a full lease set stands for."""
    return lease_name.split(":", 1)[0]


def session_name(session_key) -> str | None:
    """A stable name for a browser session that is not its key (a
    credential): lease sets, control groups and live-session entries carry
    this, never the key."""
    if not session_key:
        return None
    return hashlib.sha256(b"session:" + session_key.encode()).hexdigest()[:32]


# --- channel-layer groups and channels ---------------------------------------


def stream_group(stream) -> str:
    """The group every process serving sockets of `stream` joins once."""
    return f"stream.{stream}"


def topic_group(topic) -> str:
    """The group every process serving sockets of `topic` ("board:VN30") joins
    once: "t.board.VN30" (group names allow letters, digits, '-', '_', '.')."""
    return "t." + str(topic).replace(":", ".")


def group_stream(group) -> str:
    """The stream of a `stream_group` name ("market" for "stream.market")."""
    return group.split(".", 1)[1] if group.startswith("stream.") else group


def token_group(token_id) -> str:
    """Control group of every socket opened with one token (revoke, narrow, limits)."""
    return f"token.{token_id}"


def user_group(user_id) -> str:
    return f"user.{user_id}"


def session_group(session_name) -> str:
    """Control group of every socket of one signed-in browser session."""
    return f"session.{session_name}"


def probe_group(nonce) -> str:
    """A process's own group for channel-layer round trips (the watchdog)."""
    return f"probe.{nonce}"


# The feed worker listens here; a stream's first subscriber nudges it.
WAKE_CHANNEL = "feed-wake"
# Prefixes of the channels a web process makes for itself.
HUB_CHANNEL = "stk-hub."
CONTROL_CHANNEL = "stk-ctl."
PROBE_CHANNEL = "stk-probe."

# --- names of generations, claims and counters -------------------------------


def token_generation(prefix) -> str:
    """The generation that every committed change to a token replaces."""
    return f"token:{prefix}"


def last_used_claim(token_id) -> str:
    return f"last-used:{token_id}"


def auth_failures(address, window) -> str:
    """Failed sign-ins of one address (an IPv6 one by its network) in one fixed window."""
    return f"authfail:{address}:{window}"


# Sets of credentials known to be real (`known`): lookup prefixes of tokens,
# names of browser sessions that signed in.
KNOWN_TOKENS = "token-prefixes"
KNOWN_SESSIONS = "sessions"


def known_complete(name) -> str:
    """The generation whose presence says the known set `name` holds every
    member the database has (it was rebuilt since Redis last lost it)."""
    return f"known-complete:{name}"


def known_rebuild(name) -> str:
    """The claim of the process that rebuilds the known set `name`."""
    return f"known-rebuild:{name}"


# --- shared-state keys (Redis) ------------------------------------------------


def lease_set(name) -> str:
    return f"{PREFIX}lease:{name}"


RELEASED = f"{PREFIX}lease:released"  # connection ids released in the last lease TTL
ENTRIES = f"{PREFIX}sessions"  # index of the entries that ride on leases


def entry(member) -> str:
    return f"{PREFIX}session:{member}"


def latest(stream) -> str:
    return f"{PREFIX}latest:{stream}"


def seq(stream) -> str:
    return f"{PREFIX}seq:{stream}"


def topic_seq(topic) -> str:
    return f"{PREFIX}topic:seq:{topic}"


def topic_latest(topic) -> str:
    return f"{PREFIX}topic:latest:{topic}"


def topic_deltas(topic) -> str:
    """The topic's recent delta frames, oldest first (the resume window)."""
    return f"{PREFIX}topic:deltas:{topic}"


FEED = f"{PREFIX}feed"
FEED_HEARTBEAT = f"{PREFIX}feed:heartbeat"
FEED_LEADER = f"{PREFIX}feed:leader"  # the feed's leader lock (and publish fence)
UNFENCED = f"{PREFIX}unfenced"  # stands for "no fence" in scripts that take one
DEMO_ANCHOR = f"{PREFIX}demo:anchor"
UNIVERSE = f"{PREFIX}universe"  # the last good universe (JSON)
STORE = f"{PREFIX}store"  # set once, kept until Redis loses its data (see state.counters)


def generation(name) -> str:
    return f"{PREFIX}gen:{name}"


def claim(name) -> str:
    return f"{PREFIX}claim:{name}"


def counter(name) -> str:
    return f"{PREFIX}count:{name}"


def known(name) -> str:
    return f"{PREFIX}known:{name}"
