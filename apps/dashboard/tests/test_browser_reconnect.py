"""The page survives a server restart, stops on 40xx with the reason, and
falls back to polling when sockets keep failing."""

import pytest

from .conftest import log_in, stream_state

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

STREAMS = ("market", "foreign", "index")


def wait_live(page):
    for stream in STREAMS:
        page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'live'")


def market_seq(page):
    return page.evaluate("window.stkClients.find(c => c.name === 'market').last.seq")


def test_it_reconnects_after_the_server_drops_the_socket(server, feed, owner, page):
    log_in(page, server)
    wait_live(page)
    server.stop()
    page.wait_for_function("document.querySelector('[data-conn=market]').dataset.state !== 'live'")
    assert stream_state(page, "market") in ("retrying", "connecting", "polling")
    seq = market_seq(page)
    server.start()
    wait_live(page)
    page.wait_for_function(f"window.stkClients.find(c => c.name === 'market').last.seq > {seq}")
    assert page.is_hidden("[data-role=stopped]")


def test_a_40xx_close_stops_the_stream_and_says_why(server, feed, owner, page):
    # The page is http, but a trusted proxy says the request came over https:
    # the origins differ, so the session sockets are refused with 4003.
    log_in(page, server)
    page.goto("about:blank")
    server.stop()
    server.start(WS_TRUSTED_PROXIES="127.0.0.1")
    opened = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    page.set_extra_http_headers({"X-Forwarded-Proto": "https"})
    page.goto(server.url + "/")
    for stream in STREAMS:
        page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'stopped'")
    notice = page.locator("[data-role=stopped]")
    assert notice.is_visible()
    assert "origin not allowed" in notice.text_content()
    assert "4003" in notice.text_content()
    page.wait_for_timeout(2000)
    assert len(opened) == 3  # one try per stream: no retry on 40xx
    # The server-rendered board is still there to read.
    assert page.locator("#quotes tbody tr[data-symbol]").count() == 30


def test_when_sockets_keep_failing_it_polls_the_snapshot_endpoint(server, feed, owner, page):
    # A proxy that kills every WebSocket: the page must fall back to HTTP polling.
    page.route_web_socket("**/ws/**", lambda ws: ws.close(code=1011, reason="blocked"))
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/api/v1/snapshot/" in r.url else None)
    log_in(page, server)
    for stream in STREAMS:
        page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'polling'")
    seq = market_seq(page)
    page.wait_for_function(f"window.stkClients.find(c => c.name === 'market').last.seq > {seq}", timeout=15_000)
    assert any(url.endswith("/api/v1/snapshot/market") for url in polls)
    assert page.evaluate("window.stkMetrics.firstUpdateVia") == "poll"


def test_when_the_session_has_ended_the_reconnect_stops_with_4001_and_offers_a_login(server, feed, owner, page):
    log_in(page, server)
    wait_live(page)
    page.context.clear_cookies()  # logged out elsewhere, or the session expired
    server.stop()
    server.start(WS_AUTH_TIMEOUT=1)
    page.wait_for_function("document.querySelector('[data-conn=market]').dataset.state === 'stopped'")
    notice = page.locator("[data-role=stopped]")
    assert "4001" in notice.text_content()
    assert notice.locator("a", has_text="Log in again").get_attribute("href").startswith("/accounts/login/")
