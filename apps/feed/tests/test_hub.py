"""The streaming hub client against a fake SignalR hub on loopback: handshake,
frames, and every way the link fails (dropped, silent, malformed, refused token,
expiring token)."""

import asyncio
import datetime as dt
import json
import logging
import time

import pytest

from apps.feed import market
from apps.feed.hub import HubChannel, HubStream, parse_frame, rotation_due
from apps.feed.metrics import HUB_ERRORS, HUB_RECONNECTS
from stocktracker.lib.logs import RedactSecrets

from .conftest import Clock, ssi_client
from .fake_hub import FakeHub, trade
from .fake_ssi import FakeSSI


async def until(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    def __init__(self):
        self.messages = []
        self.links = []

    def message(self, data_type, content):
        self.messages.append((data_type, content))

    def link(self, channel, up, reason):
        self.links.append((channel.kind, up, reason))


@pytest.fixture
def fakes():
    with FakeSSI() as ssi, FakeHub(ssi, keepalive=1.0) as hub:
        yield ssi, hub


def channel(ssi, hub, recorder, sub="X-TRADE:ACB-FPT", **kwargs):
    client = ssi_client(ssi)
    link = HubChannel(
        hub.url, sub, client, on_message=recorder.message, on_link=recorder.link, backoff_base=0.05, **kwargs
    )
    return client, link


async def running(link):
    task = asyncio.ensure_future(link.run())
    await until(lambda: link.up, what="the link to come up")
    return task


async def stop(task, client):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.aclose()


@pytest.mark.parametrize("protocol", ["1.5", "1.3"])
async def test_a_link_negotiates_with_the_bearer_token_and_subscribes_exactly_its_channel(protocol):
    with FakeSSI() as ssi, FakeHub(ssi, protocol=protocol) as hub:
        recorder = Recorder()
        client, link = channel(ssi, hub, recorder)
        task = await running(link)
        await until(lambda: hub.subscribed("X-TRADE"), what="the subscription")
        bearer, params, _ = hub.negotiations[0]
        assert bearer == client.token and params["connectionData"] == '[{"name":"FcMarketDataV2Hub"}]'
        assert len(hub.connects) == 1 and hub.starts == 1  # the + and / of the connection token survived
        assert [sub for _, sub in hub.switches] == ["X-TRADE:ACB-FPT"]
        hub.broadcast("X-TRADE", trade("FPT", 99400, 100, 1000))
        await until(lambda: recorder.messages, what="a trade")
        assert recorder.messages[0][0] == "X-TRADE" and recorder.messages[0][1]["LastPrice"] == 99400.0
        await stop(task, client)


async def test_one_frame_may_carry_several_messages_and_content_may_be_an_object(fakes):
    ssi, hub = fakes
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder)
    task = await running(link)
    await until(lambda: hub.subscribed("X-TRADE"))
    hub.broadcast_many([("X-TRADE", trade("ACB", 24500, 100, 100)), ("X-TRADE", trade("FPT", 99400, 200, 300))])
    hub.broadcast("X-TRADE", trade("ACB", 24550, 100, 200), as_object=True)
    hub.broadcast("X-TRADE", trade("VNM", 61000, 100, 100))  # not subscribed: the hub does not send it
    await until(lambda: len(recorder.messages) == 3, what="three messages")
    assert [(m["Symbol"], m["TotalVol"]) for _, m in recorder.messages] == [("ACB", 100), ("FPT", 300), ("ACB", 200)]
    await stop(task, client)


def test_frames_are_parsed_as_signalr_classic_sends_them():
    content = json.dumps({"Symbol": "FPT"})
    arg = json.dumps({"DataType": "X-QUOTE", "Content": content})
    frame = {"C": "d-1", "M": [{"H": "FcMarketDataV2Hub", "M": "Broadcast", "A": [arg]}]}
    assert parse_frame(json.dumps(frame)) == ([("X-QUOTE", {"Symbol": "FPT"})], [])
    assert parse_frame("{}") == ([], [])
    assert parse_frame('{"I":"0"}') == ([], [])
    assert parse_frame('{"I":"1","E":"no such channel"}') == ([], ["invocation 1: no such channel"])
    error = {"M": [{"H": "FcMarketDataV2Hub", "M": "Error", "A": ["quota exceeded"]}]}
    assert parse_frame(json.dumps(error)) == ([], ["quota exceeded"])
    for bad in ("[1]", '{"M": 3}', '{"M": [{"M": "Broadcast", "A": ["{\\"DataType\\": \\"R\\"}"]}]}', "not json"):
        with pytest.raises(ValueError):
            parse_frame(bad)


async def test_a_dropped_connection_is_reopened_and_subscribed_again(fakes):
    ssi, hub = fakes
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder)
    task = await running(link)
    await until(lambda: hub.subscribed("X-TRADE"))
    hub.drop_all()
    await until(lambda: ("X-TRADE", False, "dropped") in recorder.links, what="the drop to be noticed")
    await until(lambda: link.up and len(hub.switches) == 2, what="a new subscription")
    assert [sub for _, sub in hub.switches] == ["X-TRADE:ACB-FPT"] * 2
    hub.broadcast("X-TRADE", trade("FPT", 99500, 100, 1100))
    await until(lambda: recorder.messages, what="data on the new link")
    await stop(task, client)


async def test_a_silent_link_is_declared_dead_after_the_keepalive_timeout(fakes):
    ssi, hub = fakes
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder)
    task = await running(link)
    await asyncio.sleep(2.5)  # keep-alives every 0.5 s keep a 1 s watchdog happy
    assert link.sessions == 1 and link.up
    hub.silence()
    silenced = time.monotonic()
    await until(lambda: ("X-TRADE", False, "silent") in recorder.links, timeout=5, what="the watchdog")
    assert time.monotonic() - silenced < 2.5
    hub.silence(False)
    await until(lambda: link.up and link.sessions == 2, what="the link back")
    await stop(task, client)


async def test_malformed_frames_are_counted_and_the_link_stays(fakes, caplog):
    ssi, hub = fakes
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder)
    task = await running(link)
    await until(lambda: hub.subscribed("X-TRADE"))
    malformed = HUB_ERRORS.labels("malformed")._value.get()
    with caplog.at_level(logging.WARNING, logger="apps.feed.hub"):
        hub.send_raw("{not json")
        bad_content = json.dumps({"DataType": "X-TRADE", "Content": "{oops"})
        hub.send_raw(json.dumps({"C": "x", "M": [{"H": "FcMarketDataV2Hub", "M": "Broadcast", "A": [bad_content]}]}))
        hub.broadcast("X-TRADE", trade("FPT", 99400, 100, 1000))
        await until(lambda: recorder.messages, what="the good trade after the bad frames")
    assert HUB_ERRORS.labels("malformed")._value.get() == malformed + 2
    assert "malformed frame" in caplog.text
    assert link.sessions == 1 and link.up  # no reconnect for a bad frame
    await stop(task, client)


async def test_a_link_is_up_only_once_its_subscription_is_acknowledged(fakes):
    ssi, hub = fakes
    hub.acknowledge = False  # keep-alives flow, SwitchChannels is never answered
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder, ack_timeout=1.5)
    task = asyncio.ensure_future(link.run())
    await until(lambda: hub.switches, what="a subscription sent")
    await asyncio.sleep(1.0)
    assert not link.up and recorder.links == []  # keep-alives alone say nothing
    await until(lambda: len(hub.switches) >= 2, what="a new attempt after the acknowledgement timed out")
    assert "not acknowledged" in link.reason_detail and not link.up
    hub.acknowledge = True
    await until(lambda: link.up, what="the acknowledged link")
    assert recorder.links == [("X-TRADE", True, "subscribed")]
    await stop(task, client)


@pytest.mark.parametrize("error_call", [False, True], ids=["E result", "E result and Error call"])
async def test_a_rejected_subscription_puts_the_link_down_with_its_reason_and_backs_off(fakes, error_call):
    ssi, hub = fakes
    rejected = HUB_RECONNECTS.labels("rejected")._value.get()
    hub.reject("Channel is invalid: quota 500 symbols exceeded", times=3, error_call=error_call)
    recorder = Recorder()
    stream = HubStream(hub.url, ssi_client(ssi), on_message=recorder.message, on_link=recorder.link, backoff_base=0.2)
    stream.start(["X-TRADE:ACB-FPT"])
    await until(lambda: len(hub.switches) >= 2, what="a second attempt")
    assert not stream.up and recorder.links == []  # never up, so never a live but empty feed
    assert "quota 500 symbols exceeded" in stream.describe_down()
    await until(lambda: stream.up, timeout=15, what="the link once the hub accepts")
    assert len(hub.switches) == 4 and HUB_RECONNECTS.labels("rejected")._value.get() == rejected + 3
    gaps = [b - a for a, b in zip(hub.connect_times()[:-1], hub.connect_times()[1:], strict=True)]
    assert all(gap > 0 for gap in gaps)
    # A rejection on a live link (an Error call, e.g. a quota) takes it down too.
    hub.send_error("Connection has been blocked, quota 10 exceeded by 2")
    await until(lambda: not stream.up, what="the link down")
    assert recorder.links[-1] == ("X-TRADE", False, "rejected")
    assert "quota 10 exceeded" in stream.describe_down()
    await until(lambda: stream.up, timeout=15, what="the link back")
    await stream.stop()
    await stream.tokens.aclose()


async def test_changing_the_set_re_sends_the_whole_list_on_the_open_link(fakes):
    ssi, hub = fakes
    assert hub.replace_on_switch  # as SSI's .NET client assumes: the new string replaces the old one
    recorder = Recorder()
    client = ssi_client(ssi)
    stream = HubStream(hub.url, client, on_message=recorder.message, on_link=recorder.link, backoff_base=0.05)
    stream.start(["X-TRADE:FPT", "MI:VN30"])
    await until(lambda: stream.up, what="two links")
    (trades,) = [c for c in stream.channels if c.kind == "X-TRADE"]
    connects = len(hub.connects)
    await stream.update(["X-TRADE:ACB-FPT-VNM", "MI:VN30"])
    await until(lambda: len(hub.switches) == 3 and trades.up, what="the new list")
    assert [c for c in stream.channels if c.kind == "X-TRADE"] == [trades]  # the same link, still open
    assert len(hub.connects) == connects and trades.sessions == 1
    assert hub.switches[-1][1] == "X-TRADE:ACB-FPT-VNM"  # the whole list, not the one symbol added
    hub.broadcast("X-TRADE", trade("VNM", 61000, 100, 100))
    hub.broadcast("X-TRADE", trade("FPT", 99400, 100, 1000))
    await until(lambda: {m["Symbol"] for _, m in recorder.messages} == {"VNM", "FPT"}, what="both symbols")
    # More symbols than a link carries: a second link for the type; fewer: it closes.
    await stream.update(["X-TRADE:ACB-FPT", "X-TRADE:VNM", "MI:VN30"])
    await until(lambda: stream.up and len(hub.subscribed("X-TRADE")) == 2, what="a second trade link")
    assert trades.sessions == 1 and hub.switches_of(hub_link_id(hub, "ACB")) == ["X-TRADE:FPT", "X-TRADE:ACB-FPT-VNM",
                                                                                 "X-TRADE:ACB-FPT"]  # fmt: skip
    await stream.update(["X-TRADE:ACB-FPT-VNM", "MI:VN30"])
    await until(lambda: len(hub.subscribed("X-TRADE")) == 1 and stream.up, what="one trade link again")
    assert len(stream.channels) == 2 and trades.sessions == 1
    await stream.stop()
    await client.aclose()


def hub_link_id(hub, symbol):
    return next(link.id for link in hub.subscribed("X-TRADE") if symbol in link.subs["X-TRADE"])


def test_when_a_link_may_move_to_a_fresh_token():
    day = dt.date(2026, 11, 26)

    def at(hhmm, on=day):
        return dt.datetime.combine(on, dt.time(*map(int, hhmm.split(":"))), tzinfo=market.VN)

    # Never during a trading stretch, even for a token about to expire.
    for moment in ("08:40", "10:00", "11:29", "13:00", "14:50"):
        assert not rotation_due(at(moment), at(moment) + dt.timedelta(minutes=1)), moment
    # Before 08:40 (from 08:00): a token that would not last the morning moves; one that does stays.
    assert rotation_due(at("08:10"), at("10:00")) and not rotation_due(at("08:10"), at("16:10"))
    assert rotation_due(at("07:30"), at("10:00"))
    assert not rotation_due(at("06:30"), at("10:00"))  # too early: a token taken now might not last either
    # Lunch: a token that would not last the afternoon; after 15:00 only one about to expire.
    assert rotation_due(at("11:45"), at("14:00")) and not rotation_due(at("11:45"), at("19:45"))
    assert not rotation_due(at("15:05"), at("18:00")) and rotation_due(at("15:05"), at("15:08"))
    # A holiday or a weekend: any hour, when it is about to expire.
    saturday = dt.date(2026, 11, 28)
    assert rotation_due(at("10:00", saturday), at("10:03", saturday))
    assert not rotation_due(at("10:00", saturday), at("12:00", saturday))


async def test_tokens_rotate_at_lunch_not_in_trading_hours_and_never_two_links_down():
    clock = Clock(dt.datetime(2026, 11, 26, 10, 0, tzinfo=market.VN))
    with FakeSSI(token_ttl=200) as ssi, FakeHub(ssi, keepalive=1.0) as hub:
        client = ssi_client(ssi)
        down, worst = set(), [0]

        def link(channel, up, reason):
            (down.discard if up else down.add)(channel)
            worst[0] = max(worst[0], len(down))

        stream = HubStream(
            hub.url, client, on_message=lambda *a: None, on_link=link, backoff_base=0.05, now=clock,
            rotate_check=0.05, token_min_age=0,
        )  # fmt: skip
        subs = ["X-TRADE:FPT", "X-QUOTE:FPT", "R:FPT", "MI:VN30", "F:FPT"]
        stream.start(subs)
        await until(lambda: stream.up, what="five links")
        down.clear()
        worst[0] = 0
        connects = len(hub.connects)
        # 10:00: every link's token expires within minutes, but the market trades: nothing moves.
        await asyncio.sleep(1.5)
        assert len(hub.connects) == connects and stream.rotations == 0
        # 11:35, lunch: each link moves to a fresh (8-hour) token, one after the other.
        ssi.token_ttl = 8 * 3600
        clock.moment = dt.datetime(2026, 11, 26, 11, 35, tzinfo=market.VN)
        await until(lambda: stream.rotations == 5 and stream.up, timeout=20, what="five rotations")
        await asyncio.sleep(0.5)
        assert stream.rotations == 5 and len(hub.connects) == connects + 5  # once each, then they last the day
        assert worst[0] == 1  # never two links down at once
        assert {bearer for bearer, _ in hub.connects[connects:]} == {client.token}
        await stream.stop()
        await client.aclose()


async def test_a_token_refused_at_negotiate_is_replaced_by_a_fresh_one(fakes):
    ssi, hub = fakes
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder)
    hub.refuse_negotiate(1)
    task = await running(link)
    assert ("X-TRADE", True, "subscribed") in recorder.links
    tokens = [bearer for bearer, _, _ in hub.negotiations]
    assert len(tokens) == 2 and tokens[0] != tokens[1]  # the refused token was not tried again
    assert len(ssi.calls("AccessToken")) == 2
    await stop(task, client)


async def test_one_link_per_channel_type_streams_correctly_when_switching_replaces(fakes):
    ssi, hub = fakes
    assert hub.replace_on_switch
    recorder = Recorder()
    client = ssi_client(ssi)
    stream = HubStream(hub.url, client, on_message=recorder.message, on_link=recorder.link, backoff_base=0.05)
    stream.start(["X-TRADE:FPT", "X-QUOTE:FPT", "R:FPT", "MI:VN30", "F:FPT"])
    await until(lambda: stream.up and len(hub.subscribed()) == 5, what="five links")
    hub.broadcast("X-TRADE", trade("FPT", 99400, 100, 1000))
    hub.broadcast("R", {"Symbol": "FPT", "TotalRoom": 1000.0, "CurrentRoom": 10.0})
    hub.broadcast("MI", {"IndexId": "VN30", "IndexValue": 2000.5})
    hub.broadcast("X-QUOTE", {"Symbol": "FPT", "BidPrice1": 99300.0})
    hub.broadcast("F", {"Symbol": "FPT", "TradingSession": "LO"})
    await until(lambda: len(recorder.messages) == 5, what="one message of each type")
    assert sorted(t for t, _ in recorder.messages) == ["F", "MI", "R", "X-QUOTE", "X-TRADE"]
    hub.drop_all()
    await until(lambda: not stream.up, what="down")
    assert stream.describe_down().startswith("stream down:")
    await until(lambda: stream.up, what="up again")
    await stream.stop()
    assert hub.links == set() or await_links_gone(hub)
    await client.aclose()


def await_links_gone(hub):
    deadline = time.monotonic() + 5
    while hub.links and time.monotonic() < deadline:
        time.sleep(0.05)
    return not hub.links


async def test_neither_the_bearer_nor_the_connection_token_reaches_a_log_line(fakes, caplog):
    ssi, hub = fakes
    recorder = Recorder()
    client, link = channel(ssi, hub, recorder)
    with caplog.at_level(logging.DEBUG):
        task = await running(link)
        hub.drop_all()
        await until(lambda: link.sessions == 2 and link.up, what="a reconnect")
        await stop(task, client)
    secrets = [bearer for bearer, _, _ in hub.negotiations]
    secrets += list(hub._tokens)
    redact = RedactSecrets()
    lines = []
    for record in caplog.records:
        redact.filter(record)
        lines.append(record.getMessage() + (record.exc_text or ""))
    text = "\n".join(lines)
    assert "negotiate" in text or "subscribed" in text  # there was logging to check
    for secret in secrets:
        assert secret not in text
        head = secret.split("+")[0]
        assert len(head) < 8 or head not in text  # nor the escaped connection token (a long enough piece of it)
