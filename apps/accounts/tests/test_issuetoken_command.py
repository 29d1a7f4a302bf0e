import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import ApiToken

from .conftest import run_check

pytestmark = pytest.mark.django_db(transaction=True)


def _issue(*args):
    out, err = StringIO(), StringIO()
    call_command("issuetoken", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_it_prints_the_token_alone_on_stdout_once(owner):
    raw, summary = _issue(
        "owner", "--streams", "market,index", "--expires", "90d", "--label", "desk", "--max-connections", "4"
    )
    assert re.fullmatch(r"stk_[0-9A-Za-z]{46}", raw)
    assert raw not in summary and raw[:12] in summary
    token = ApiToken.objects.get()
    assert (token.label, token.streams, token.max_connections) == ("desk", ["market", "index"], 4)
    assert token.expires_at - token.created_at == timedelta(days=90)
    assert run_check(raw, "index").ok
    assert run_check(raw, "foreign").reason == "stream"


def test_never_must_be_asked_for(owner):
    _issue("owner", "--expires", "never")
    _issue("owner")
    assert sorted(ApiToken.objects.values_list("expires_at", flat=True), key=lambda v: v is None)[-1] is None
    assert ApiToken.objects.filter(expires_at__isnull=False).count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "no user"),
        (["owner", "--streams", "bonds"], "unknown"),
        (["owner", "--expires", "soon"], "use e.g."),
        (["owner", "--expires", "0d"], "between"),
        (["owner", "--expires", "2001-01-01"], "past"),
        (["owner", "--max-connections", "0"], "at least 1"),
    ],
)
def test_bad_arguments_issue_nothing(owner, args, message):
    with pytest.raises(CommandError, match=message):
        _issue(*args)
    assert not ApiToken.objects.exists()
