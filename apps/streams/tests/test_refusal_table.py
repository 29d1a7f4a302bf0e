"""One table of refusal reasons: the protocol document, the REST snapshot and
the dashboard's script all follow `protocol.Refusal`."""

from pathlib import Path

import yaml

from apps.streams.protocol import Close, refusal_table

ASYNCAPI = Path(__file__).resolve().parents[3] / "docs" / "asyncapi.yaml"


def test_every_refusal_is_in_the_protocol_document():
    text = ASYNCAPI.read_text()
    spec = yaml.safe_load(text)
    codes = set(spec["info"]["x-close-codes"])
    for row in refusal_table():
        assert str(row["close"]) in codes, row
        assert row["error"] in text, row
        assert row["close"] in set(Close), row


def test_every_close_code_has_one_meaning_per_error_code():
    rows = refusal_table()
    by_error = {}
    for row in rows:
        by_error.setdefault(row["error"], set()).add(row["close"])
    # An error code means one thing to a client: one close code (and so one retry rule).
    assert all(len(closes) == 1 for closes in by_error.values()), by_error


def test_the_dashboard_gets_the_table_from_the_server(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw-0123456789")
    client.force_login(user)
    page = client.get("/").content.decode()
    assert '"refusals"' in page and '"token_revoked"' in page
    script = (Path(__file__).resolve().parents[3] / "static" / "dashboard" / "socket.js").read_text()
    assert "cfg.refusals" in script and '"access revoked"' not in script
