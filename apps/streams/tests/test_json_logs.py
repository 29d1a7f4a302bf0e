"""LOG_FORMAT=json: one object per line with millisecond UTC timestamps and every
`extra` field a caller passed; secrets are redacted everywhere in the line."""

import io
import json
import logging
import re

import pytest

from stocktracker.lib.logs import JsonFormatter, RedactSecrets

TOKEN = "stk_" + "A1b2C3d4" * 5 + "zzzzzz"


@pytest.fixture
def lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_a_line_keeps_every_extra_field_with_its_type(lines):
    logger, read = lines
    extra = {"stream": "market", "code": 4100, "duration_s": 1.25, "queue_depth": 7, "server": "web-2", "ok": True}
    logger.info("disconnect stream=%s", "market", extra=extra)
    (line,) = read()
    assert line["message"] == "disconnect stream=market"
    assert line["level"] == "INFO" and line["logger"] == "tests.json_logs"
    for key, value in extra.items():
        assert line[key] == value, key


def test_the_timestamp_is_utc_with_milliseconds(lines):
    logger, read = lines
    logger.warning("hello")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", read()[0]["ts"])


def test_no_token_survives_in_the_message_an_extra_or_a_traceback(lines):
    logger, read = lines
    try:
        raise ValueError(f"bad header Bearer {TOKEN}")
    except ValueError:
        logger.exception("refused %s", f"/ws/market?token={TOKEN}", extra={"url": f"/ws/market?token={TOKEN}"})
    (line,) = read()
    text = json.dumps(line)
    assert TOKEN not in text and TOKEN[12:] not in text
    assert "[redacted]" in line["message"] and "[redacted]" in line["url"] and "[redacted]" in line["exc"]
    assert "ValueError" in line["exc"]
