"""Logging helpers: no token ever reaches a log line, and JSON lines for shippers."""

import datetime as dt
import logging
import re

import pythonjsonlogger.json

# A well-formed token, or anything after `token=` in a URL or query string.
_TOKEN = re.compile(r"stk_[0-9A-Za-z]{4,}")
_QUERY = re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[^\s'\",]+", re.IGNORECASE)


# The lookup prefix (stk_ + 8 characters) is public: it is what admins and logs use to name a token.
_PREFIX_LEN = 12


def _cut(match):
    token = match.group(0)
    return token if len(token) <= _PREFIX_LEN else token[:_PREFIX_LEN] + "…[redacted]"


def redact(text: str) -> str:
    text = _TOKEN.sub(_cut, text)
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


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per line (python-json-logger): `ts` (UTC, milliseconds),
    `level`, `logger`, `message`, every `extra` field the caller passed, and `exc`.
    Every string in the line is redacted too, extras and tracebacks included."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("fmt", ["levelname", "name", "message"])
        renames = {"levelname": "level", "name": "logger", "exc_info": "exc", "stack_info": "stack"}
        kwargs.setdefault("rename_fields", renames)
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)

    def add_fields(self, log_data, record, message_dict):
        created = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        log_data["ts"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data):
        return {key: redact(value) if isinstance(value, str) else value for key, value in log_data.items()}
