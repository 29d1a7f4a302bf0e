"""Garbage never crashes a check and never reaches the database."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.accounts import tokens

from .conftest import run_check

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

garbage = st.one_of(
    st.text(max_size=100),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=40, max_size=60).map(lambda s: "stk_" + s),
    st.text(alphabet=tokens.ALPHABET, min_size=0, max_size=80).map(lambda s: "stk_" + s),
    st.text(alphabet=tokens.ALPHABET + "_-+/= ", min_size=46, max_size=46).map(lambda s: "stk_" + s),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    # ~10 KB: a short random seed repeated (Hypothesis cannot draw 10 KB directly).
    st.text(min_size=1, max_size=30).map(lambda s: (s * (10_240 // len(s) + 1))[:10_240]),
    st.text(alphabet=tokens.ALPHABET, min_size=1, max_size=30).map(lambda s: "stk_" + s * (10_240 // len(s) + 1)),
)


def _truncations_and_typos(raw):
    yield from (raw[:cut] for cut in range(len(raw)))
    yield raw + "A"
    yield " " + raw
    yield raw.upper()
    yield raw.replace("stk_", "STK_")
    yield raw[:-1] + ("A" if raw[-1] != "A" else "B")
    yield raw[:20] + "\u00e9" + raw[21:]
    yield raw[:20] + "\uff21" + raw[21:]  # fullwidth A


@FUZZ
@given(raw=garbage)
def test_garbled_tokens_are_refused_with_no_query(raw, db, django_assert_num_queries):
    with django_assert_num_queries(0):
        result = run_check(raw)
    assert result.reason == "bad"


@FUZZ
@given(raw=st.one_of(st.none(), st.integers(), st.binary(max_size=50), st.lists(st.text(), max_size=3)))
def test_values_that_are_not_strings_are_refused_with_no_query(raw, db, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert run_check(raw).reason == "bad"


def test_truncated_and_mistyped_real_tokens_are_refused_with_no_query(owner_token, django_assert_num_queries):
    _, raw = owner_token
    with django_assert_num_queries(0):
        for variant in _truncations_and_typos(raw):
            assert run_check(variant).reason == "bad", variant


@FUZZ
@given(body=st.text(alphabet=tokens.ALPHABET, min_size=tokens.BODY_LEN, max_size=tokens.BODY_LEN))
def test_a_well_formed_unknown_token_costs_one_query_then_none(body, transactional_db, django_assert_max_num_queries):
    raw = "stk_" + body + tokens.checksum(body)
    with django_assert_max_num_queries(1):
        assert run_check(raw).reason == "bad"
    with django_assert_max_num_queries(0):
        assert run_check(raw).reason == "bad"


@pytest.mark.parametrize("stream", ["", "MARKET", "ws/market", "\x00", "x" * 10_000])
def test_an_unknown_stream_is_refused_not_crashed(transactional_db, owner_token, stream):
    _, raw = owner_token
    assert run_check(raw, stream).reason == "stream"
