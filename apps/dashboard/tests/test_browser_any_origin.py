"""The board works on whatever origin it is served from, with no origin
configured; a page on another origin still cannot use the session."""

import contextlib
import http.server
import threading

import pytest

from .conftest import log_in, stream_state

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

STREAMS = ("market", "foreign", "index")

# Opens one socket and reports how it ended: welcome, or the close code.
PROBE = """url => new Promise(resolve => {
    const ws = new WebSocket(url);
    ws.onmessage = event => {
        const frame = JSON.parse(event.data);
        if (frame.type === "welcome") { ws.close(); resolve("welcome"); }
    };
    ws.onclose = event => resolve(event.code);
})"""


@contextlib.contextmanager
def elsewhere():
    """A plain page on another port of the same host: another origin, but the
    browser still sends the host's cookies with its requests."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_the_board_goes_live_on_a_random_port_with_no_origin_configured(server, feed, owner, page):
    assert server.port != 8000 and server.env["WS_ALLOWED_ORIGINS"] == ""
    log_in(page, server)
    for stream in STREAMS:
        page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'live'")
    seq = page.evaluate("window.stkClients.find(c => c.name === 'market').last.seq")
    page.wait_for_function(f"window.stkClients.find(c => c.name === 'market').last.seq > {seq}")
    assert all(stream_state(page, stream) == "live" for stream in STREAMS)
    assert "refused cross-origin" not in server.log()


def test_a_page_on_another_origin_cannot_use_the_session(server, feed, owner, page):
    log_in(page, server)
    socket_url = server.url.replace("http://", "ws://") + "/ws/market"
    # The same page's own socket is welcomed...
    assert page.evaluate(PROBE, socket_url) == "welcome"
    # ...a page on another port of the same host (so the browser still sends the
    # session cookie) is refused.
    with elsewhere() as other:
        page.goto(other)
        assert page.evaluate("location.origin") + "/" == other
        assert page.evaluate(PROBE, socket_url) == 4003
    assert f"refused cross-origin session stream=market ip=127.0.0.1 origin='{other.rstrip('/')}'" in server.log()
