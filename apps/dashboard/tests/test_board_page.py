import re

from asgiref.sync import async_to_sync

from stocktracker.lib.state import get_state

from . import samples


def lease_count(key):
    async def count():
        return await get_state().lease_count(key)

    return async_to_sync(count)()


def test_it_renders_the_latest_snapshot_on_the_server(client, owner):
    samples.publish_all()
    client.force_login(owner)
    html = client.get("/").content.decode()
    assert 'data-symbol="ACB"' in html
    # Prices in thousands with two decimals; the index and futures panels are filled.
    assert ">24.50<" in html
    assert "1,280.55" in html
    assert "VN30F2612" in html
    assert "premium" in html
    assert "Simulated data" in html
    assert "Continuous" in html


def test_it_colours_each_price_by_the_vietnamese_rules(client, owner):
    samples.publish_all()
    client.force_login(owner)
    html = client.get("/").content.decode()
    expected = {"ACB": "c-ceil", "FPT": "c-floor", "HPG": "c-ref", "VCB": "c-up", "VNM": "c-down"}
    for symbol, cls in expected.items():
        row = re.search(rf'<tr data-symbol="{symbol}">(.*?)</tr>', html, re.S).group(1)
        last = re.search(r'<td data-field="last"[^>]*class="([^"]*)"', row).group(1)
        assert cls in last.split(), (symbol, last)
    ssi = re.search(r'<tr data-symbol="SSI">(.*?)</tr>', html, re.S).group(1)
    assert not re.search(r'data-field="last"[^>]*class="[^"]*c-', ssi)


def test_a_page_view_counts_as_a_subscriber_of_every_stream(client, owner):
    samples.publish_all()
    client.force_login(owner)
    client.get("/")
    for stream in ("market", "foreign", "index"):
        assert lease_count(f"stream:{stream}") == 1


def test_with_no_data_yet_it_waits_briefly_then_renders_a_waiting_board(client, owner):
    client.force_login(owner)
    response = client.get("/")
    assert response.status_code == 200
    assert "Waiting for market data" in response.content.decode()


def test_the_page_carries_no_token_and_no_socket_credentials(client, owner, owner_token):
    _, raw = owner_token
    samples.publish_all()
    client.force_login(owner)
    html = client.get("/").content.decode()
    assert raw not in html
    assert "token=" not in html
    assert '"ws": "/ws/market"' in html
