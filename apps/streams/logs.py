"""Logging helpers: no token ever reaches a log line, and JSON lines for shippers."""

import json
import logging
import re

# A well-formed token, or anything after `token=` in a URL or query string.
_TOKEN = re.compile(r"stk_[0-9A-Za-z]{4,}")
_QUERY = re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[^\s'\",]+", re.IGNORECASE)


def redact(text: str) -> str:
    text = _TOKEN.sub(lambda m: m.group(0)[:12] + "…[redacted]", text)
    text = _QUERY.sub(r"\1[redacted]", text)
    return _BEARER.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites every record's final message, whoever logged it (our code or a library's)."""

    def filter(self, record):
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("stream", "user", "token_prefix", "ip", "duration_s", "code", "reason", "sent", "sent_bytes"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)
