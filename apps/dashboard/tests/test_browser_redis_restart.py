"""The board keeps moving when Redis restarts without its data: the stream's
counter starts again in a new epoch, and the page takes it at once, without
a reload (a page that compared seq alone would ignore every update until the
new seq passed the old one)."""

import time

import pytest

from .conftest import LiveServer, log_in, rows

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

STREAMS = ("market", "foreign", "index")
SEQ_BEFORE = 40  # the board has shown this many market updates before Redis restarts
NEW_EPOCH_WITHIN = 10.0  # seconds after Redis answers
UPDATES_AFTER = 10  # market updates of the new epoch the board then shows ...
UPDATES_WITHIN = 15.0  # ... within this many seconds

WATCH = """() => {
    window.stkNotReloaded = true;
    window.stkUpdates = [];
    document.addEventListener("stk:frame", (ev) => {
        const f = ev.detail.frame;
        if (f.type === "snapshot" && f.stream === "market") window.stkUpdates.push([f.epoch, f.seq]);
    });
}"""


def test_the_board_takes_the_new_epoch_after_redis_restarts_empty(own_redis, processes, owner, page):
    env = {"REDIS_URL": own_redis.url}
    processes.worker(
        FEED_SOURCE="simulator", SIMULATOR_CLOCK="demo", SIMULATOR_SPEED=60, FEED_INTERVAL=0.5,
        FEED_PUBLISH_INTERVAL=0.5, **env,
    )  # fmt: skip
    server = LiveServer(processes, **env).start()
    log_in(page, server)
    for stream in STREAMS:
        page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'live'")
    market = "window.stkClients.find(c => c.name === 'market').last"
    page.wait_for_function(f"{market}.seq >= {SEQ_BEFORE}", timeout=60_000)
    old_epoch = page.evaluate(f"{market}.epoch")
    page.evaluate(WATCH)
    board_before = rows(page)

    answered = own_redis.restart_empty()
    page.wait_for_function(
        f"window.stkUpdates.some(([epoch]) => epoch !== {old_epoch!r})",
        timeout=max(1.0, answered + NEW_EPOCH_WITHIN - time.time()) * 1000,
    )
    took = time.time() - answered
    page.wait_for_function(
        f"window.stkUpdates.filter(([epoch]) => epoch !== {old_epoch!r}).length >= {UPDATES_AFTER}",
        timeout=UPDATES_WITHIN * 1000,
    )
    new = page.evaluate(f"window.stkUpdates.filter(([epoch]) => epoch !== {old_epoch!r})")
    print(f"\nthe board showed the new epoch {took:.1f} s after Redis answered, then {len(new)} updates of it")
    assert page.evaluate("window.stkNotReloaded === true")  # the same page, not a reload
    assert page.evaluate(f"{market}.epoch") == new[-1][0] != old_epoch
    assert rows(page) != board_before  # the numbers on the board moved
    assert page.get_attribute("[data-conn=market]", "data-state") == "live"
