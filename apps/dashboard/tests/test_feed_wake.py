import asyncio
import threading

from channels.layers import get_channel_layer

from stocktracker.lib.keys import WAKE_CHANNEL

from . import samples


def test_a_page_view_wakes_an_idle_feed_and_shows_its_first_snapshot(client, owner):
    """No latest yet: the view sends feed.wake and waits briefly for the feed's frames."""
    listening, woken = threading.Event(), []

    async def idle_feed():
        layer = get_channel_layer()
        receive = asyncio.ensure_future(layer.receive(WAKE_CHANNEL))
        await asyncio.sleep(0.3)  # subscribed
        listening.set()
        woken.append(await asyncio.wait_for(receive, timeout=10))
        for stream, data in (("market", samples.market()), ("foreign", samples.foreign()), ("index", samples.index())):
            await samples.publish_snapshot(stream, data, day=samples.EPOCH, source_ms=0, simulated=True)

    feed = threading.Thread(target=asyncio.run, args=(idle_feed(),))
    feed.start()
    try:
        assert listening.wait(5)
        client.force_login(owner)
        html = client.get("/").content.decode()
    finally:
        feed.join(15)
    assert woken == [{"type": "feed.wake"}]
    assert 'data-symbol="ACB"' in html
    assert "Waiting for market data" not in html
