"""No token ever reaches a log line: every transport, good and bad tokens,
with daphne, channels, django and our loggers at DEBUG."""

import io
import logging

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.test import Client

from apps.accounts import tokens
from stocktracker.lib.logs import RedactSecrets

from .clients import close_code, connect, outcome, recv_json
from .conftest import closed_with, communicator, frame

pytestmark = pytest.mark.django_db(transaction=True)


async def _session_cookie(user):
    def login():
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return await sync_to_async(login)()


async def _every_transport(ws_url, raw, unknown, session):
    headers = {"Cookie": f"sessionid={session}", "Origin": "http://127.0.0.1:8000"}
    async with websockets.connect(ws_url + "/ws/market", additional_headers=headers) as ws:
        assert (await recv_json(ws))["type"] == "welcome"  # the session transport (no token at all)
    result, ws = await outcome(ws_url, raw)
    assert result == "open"
    await ws.close()
    async with connect(ws_url + "/ws/index", raw, how="query") as ws:
        assert (await recv_json(ws))["type"] == "welcome"
    async with connect(ws_url + "/ws/foreign") as ws:
        await ws.send(f'{{"type":"auth","token":"{raw}"}}')
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send(f'{{"type":"auth","token":"{raw}"}}')  # an error frame, still no log of it
        await recv_json(ws)
    for how in ("bearer", "query"):
        async with connect(ws_url + "/ws/market", unknown, how=how) as ws:
            code, _ = await close_code(ws)
            assert code == 4001


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_real_daphne_at_debug_never_logs_a_token(processes, owner, owner_token, log_format):
    raw = owner_token[1]
    unknown = tokens.generate()
    from django.conf import settings

    # The session cookie is signed here: the server needs the same key.
    server = processes.daphne("-v", "2", LOG_LEVEL="debug", LOG_FORMAT=log_format, SECRET_KEY=settings.SECRET_KEY)
    await _every_transport(server.ws_url, raw, unknown, await _session_cookie(owner))
    async with httpx.AsyncClient() as client:
        # (daphne's HTTP access log prints query strings; only WS paths are logged without them)
        await client.get(f"{server.http_url}/healthz", headers={"Authorization": f"Bearer {raw}"})
    processes.stop(server)
    log = server.log_path.read_text()
    assert "DEBUG" in log and "connect stream=market" in log  # the log really was at debug
    assert "token_prefix=session" in log  # the session socket was logged too
    for secret in (raw, unknown, raw[tokens.LOOKUP_LEN :], unknown[tokens.LOOKUP_LEN :]):
        assert secret not in log


async def test_in_process_log_output_is_redacted(owner_token):
    raw = owner_token[1]
    # The redaction filter on a root handler, as the console handler has it (that wiring
    # is what the real-daphne test above checks): it sees every record, ours or a library's.
    import stocktracker.asgi  # noqa: F401 - django.setup() re-applies LOGGING: do it before adding our handler

    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.addFilter(RedactSecrets())
    logging.getLogger().addHandler(handler)
    names = ["", "django", "daphne", "channels", "apps.streams", "asyncio"]
    old_levels = [logging.getLogger(n).level for n in names]
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        comm = communicator(token=raw, how="query")
        await comm.connect()
        await frame(comm)
        await comm.disconnect()
        bad = communicator(token=tokens.generate(), how="bearer")
        await bad.connect()
        await closed_with(bad)
        logging.getLogger("some.library").debug("scope path=/ws/market?token=%s header=Bearer %s", raw, raw)
        await sync_to_async(logging.getLogger("django.request").warning)("GET /x?token=%s", raw)
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in zip(names, old_levels, strict=True):
            logging.getLogger(name).setLevel(level)
    output = sink.getvalue()
    assert "connect stream=market" in output
    assert raw not in output and raw[tokens.LOOKUP_LEN :] not in output
