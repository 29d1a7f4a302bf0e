"""The demo clock starts from one shared moment: a fresh start opens the
demo day in continuous trading, and every process (a leader and the
standby that takes over) shows the same simulated time."""

import datetime as dt

import pytest

from apps.feed import market
from apps.feed.simulator import SimulatorSource, demo_anchor
from stocktracker.lib.state import reset_state


@pytest.mark.parametrize("mode", ["redis", "embedded"])
async def test_a_fresh_demo_opens_in_continuous_trading_at_twenty_past_nine(mode, request):
    if mode == "embedded":
        request.getfixturevalue("embedded")
    source = SimulatorSource(clock="demo", speed=60)
    await source.fetch({"market"})
    moment = source.now().astimezone(market.VN)
    assert dt.time(9, 20) <= moment.time() < dt.time(9, 22)
    assert market.phase(moment) == "continuous"


async def test_two_processes_share_the_demo_moment():
    leader = SimulatorSource(clock="demo", speed=60)
    await leader.fetch({"market"})
    reset_state()  # a second process: its own connections and memory, the same Redis
    standby = SimulatorSource(clock="demo", speed=60)
    await standby.fetch({"market"})
    assert standby.demo.anchor == leader.demo.anchor
    assert abs((standby.now() - leader.now()).total_seconds()) < 60  # a second of wall time at speed 60
    assert await demo_anchor() == leader.demo.anchor
