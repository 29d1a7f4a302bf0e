"""Every name the processes share (lease sets, channel-layer groups and
channels, Redis keys) is built in `stocktracker/lib/keys.py`, never with a
literal at a call site: two spellings of one name would be two names."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ROOT / "stocktracker" / "lib" / "keys.py"
SCANNED = ("apps", "stocktracker", "bench", "scripts")

# A literal that starts like one of the shared names: a Redis key
# ("stk:..."), a lease set ("token:{...}"), a group ("stream.{...}"), one of
# our channels ("stk-hub."), or a budget or claim name.
KINDS = "ip|token|user|session|stream|viewer|authfail|last-used|gen|claim|count|lease|latest|seq|feed|demo|probe"
NAME_LITERAL = re.compile(
    r"""(?x)
    (?<![\w])[fbr]*["']                       # a string literal starts
    (?:
        stk:|stk-(?:hub|ctl|probe)\.          # a Redis key or one of our channel prefixes
      | (?:"""
    + KINDS
    + r""")[:.]\{                           # a lease set or group built from a value
    )
    """
)


def _code_files():
    for top in SCANNED:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).parts
            if "tests" in parts or "migrations" in parts or path == KEYS:
                continue
            yield path


def test_shared_names_are_built_in_lib_keys_only():
    found = []
    for path in _code_files():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if NAME_LITERAL.search(code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "build these names with stocktracker.lib.keys:\n" + "\n".join(found)


def test_the_scan_sees_a_name_built_at_a_call_site():
    for line in [
        'key = f"token:{token_id}"',
        'group = f"stream.{name}"',
        'r.get("stk:feed")',
        "new_channel('stk-hub.')",
    ]:
        assert NAME_LITERAL.search(line), line
    for line in ['message = f"token {prefix} revoked"', 'label = "tokens:"', 'url = f"/ws/{stream}"']:
        assert not NAME_LITERAL.search(line), line


def test_lib_keys_keeps_the_names_the_deployments_have_in_redis():
    """Renaming a key strands what a running deployment keeps under the old one."""
    from stocktracker.lib import keys

    assert keys.lease_set(keys.token(7)) == "stk:lease:token:7"
    assert keys.seq("market") == "stk:seq:market" and keys.latest("market") == "stk:latest:market"
    assert (
        keys.FEED_LEADER == "stk:feed:leader"
        and keys.generation(keys.token_generation("stk_ab")) == "stk:gen:token:stk_ab"
    )
    assert keys.stream_group("index") == "stream.index" and keys.WAKE_CHANNEL == "feed-wake"
