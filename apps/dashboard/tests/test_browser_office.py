"""Several staff behind one address (here 127.0.0.1) each open the dashboard in
Chromium with the per-IP cap at its default: every tab's three sockets go live."""

import pytest

from conftest import PASSWORD

from . import samples
from .conftest import LiveServer, log_in, stream_state

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

STAFF = 4  # 12 dashboard sockets from one address, over the default per-IP cap of 5


def test_staff_behind_one_address_each_get_a_live_dashboard(processes, browser, django_user_model, settings):
    for i in range(STAFF):
        django_user_model.objects.create_user(f"analyst{i}", f"a{i}@example.com", PASSWORD)
    samples.publish_all()
    server = LiveServer(processes, WS_MAX_CONNECTIONS_PER_IP=settings.WS_MAX_CONNECTIONS_PER_IP).start()
    contexts = [browser.new_context() for _ in range(STAFF)]
    try:
        pages = []
        for i, context in enumerate(contexts):
            page = context.new_page()
            page.set_default_timeout(15_000)
            log_in(page, server, username=f"analyst{i}")
            pages.append(page)
        for page in pages:
            for stream in ("market", "foreign", "index"):
                page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'live'")
        assert all(stream_state(page, "market") == "live" for page in pages)
    finally:
        for context in contexts:
            context.close()
