import hashlib
import math
import re

import pytest

from apps.accounts import tokens
from apps.accounts.auth import TokenCache

from .conftest import run_check

FORMAT = re.compile(r"^stk_[0-9A-Za-z]{46}$")


def test_a_token_is_typed_random_and_checksummed():
    raw = tokens.generate()
    assert FORMAT.match(raw)
    assert tokens.is_well_formed(raw)
    assert tokens.lookup_prefix(raw) == raw[:12]


def test_the_secret_part_alone_carries_more_than_160_bits():
    secret_chars = tokens.BODY_LEN - (tokens.LOOKUP_LEN - len(tokens.PREFIX))
    assert secret_chars * math.log2(62) > 160


def test_every_single_character_typo_fails_the_checksum():
    raw = tokens.generate()
    for index in range(len(tokens.PREFIX), len(raw)):
        for char in "0aZ9":
            if raw[index] != char:
                typo = raw[:index] + char + raw[index + 1 :]
                assert not tokens.is_well_formed(typo), typo


def test_swapping_two_neighbouring_characters_fails_the_checksum():
    raw = tokens.generate()
    for index in range(len(tokens.PREFIX), len(raw) - 1):
        if raw[index] != raw[index + 1]:
            swapped = raw[:index] + raw[index + 1] + raw[index] + raw[index + 2 :]
            assert not tokens.is_well_formed(swapped)


def test_tokens_do_not_repeat():
    assert len({tokens.generate() for _ in range(2000)}) == 2000


def test_only_the_lookup_prefix_and_a_sha256_digest_are_stored(owner_token):
    token, raw = owner_token
    token.refresh_from_db()
    assert token.prefix == raw[:12]
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest()


@pytest.mark.django_db(transaction=True)
def test_a_check_accepts_the_token_only_for_its_exact_plaintext(owner_token):
    token, raw = owner_token
    # Same prefix, different (well-formed) secret: found by prefix, refused by digest,
    # whether the prefix is loaded from the database or answered from the cache.
    body = raw[4:-6]
    forged_body = body[:8] + ("A" if body[8] != "A" else "B") + body[9:]
    forged = "stk_" + forged_body + tokens.checksum(forged_body)
    assert tokens.is_well_formed(forged)
    assert run_check(forged, cache=TokenCache()).reason == "bad"
    assert run_check(raw).token_id == token.pk
    assert run_check(forged).reason == "bad"
