"""The SSI client against a fake FastConnect server over real HTTP, in every failure mode."""

import datetime as dt
import itertools
import time

import pytest

from apps.feed.ssi import BACKOFF_CAP_S, SSIError, backoff_delay, jwt_exp, retry_after_seconds

from .conftest import ssi_client
from .fake_ssi import make_jwt

DAY = dt.date(2026, 11, 26)


async def board(client):
    return await client.daily_stock_price(DAY, market_code="HOSE")


async def test_it_takes_a_token_and_sends_it_as_a_bearer_header(fake_ssi):
    client = ssi_client(fake_ssi)
    rows = await board(client)
    assert len(rows) >= 30 and rows[0]["Market"] == "HOSE"
    token_call, data_call = fake_ssi.requests
    assert token_call.name == "AccessToken" and token_call.method == "POST"
    assert data_call.headers["authorization"] == f"Bearer {client.token}"
    assert data_call.params["pagesize"] == "1000" and data_call.params["fromdate"] == "26/11/2026"
    await board(client)
    assert len(fake_ssi.calls("AccessToken")) == 1  # reused until it nears expiry
    await client.aclose()


async def test_it_follows_pages_up_to_the_total(clock):
    from .fake_ssi import FakeSSI

    with FakeSSI(now=clock, board_padding=1100) as server:
        client = ssi_client(server)
        rows = await board(client)
        assert len(rows) == len({row["Symbol"] for row in rows}) > 1100
        assert [r.params["pageindex"] for r in server.calls("DailyStockPrice")] == ["1", "2"]
        await client.aclose()


async def test_it_reads_the_nested_vn30_basket_and_the_listed_futures(fake_ssi):
    client = ssi_client(fake_ssi)
    basket = await client.index_components("VN30")
    assert len(basket) == 30 and "FPT" in basket
    details = await client.securities_details("DER")
    assert details[0]["Symbol"].startswith("41I1")
    await client.aclose()


async def test_a_401_in_the_body_refreshes_the_token_once_and_retries(fake_ssi):
    client = ssi_client(fake_ssi)
    await board(client)
    first = client.token
    fake_ssi.revoke_tokens()  # SSI answers HTTP 200 + {"status": 401}
    assert await board(client)
    assert client.token != first
    assert [r.name for r in fake_ssi.requests][-3:] == ["DailyStockPrice", "AccessToken", "DailyStockPrice"]
    await client.aclose()


async def test_an_http_401_refreshes_the_token_once_and_retries(fake_ssi):
    client = ssi_client(fake_ssi)
    fake_ssi.fail("http401")
    assert await board(client)
    assert len(fake_ssi.calls("AccessToken")) == 2
    await client.aclose()


async def test_a_fresh_token_refused_again_is_an_error_no_retry_can_fix(fake_ssi):
    client = ssi_client(fake_ssi)
    fake_ssi.fail("body401", times=2)
    with pytest.raises(SSIError) as error:
        await board(client)
    assert error.value.retryable is False and error.value.status == 401
    await client.aclose()


async def test_a_rejected_consumer_key_is_not_retryable(fake_ssi):
    client = ssi_client(fake_ssi)
    fake_ssi.fail("invalid_key", on="token")
    with pytest.raises(SSIError, match="connection is invalid") as error:
        await board(client)
    assert error.value.retryable is False
    assert len(fake_ssi.requests) == 1
    await client.aclose()


async def test_a_token_issued_already_expired_is_replaced_before_use(fake_ssi):
    client = ssi_client(fake_ssi)
    fake_ssi.fail("expired_jwt", on="token")
    assert await board(client)
    assert [r.name for r in fake_ssi.requests] == ["AccessToken", "AccessToken", "DailyStockPrice"]
    await client.aclose()


async def test_the_token_is_refreshed_before_its_exp(fake_ssi):
    now = [time.time()]
    client = ssi_client(fake_ssi, clock=lambda: now[0])
    await board(client)
    exp = jwt_exp(client.token)
    now[0] = exp - 400  # more than the 5-minute margin left: keep it
    await board(client)
    assert len(fake_ssi.calls("AccessToken")) == 1
    now[0] = exp - 200  # inside the margin: refresh first, no 401 needed
    await board(client)
    assert len(fake_ssi.calls("AccessToken")) == 2
    assert [r.name for r in fake_ssi.requests][-2:] == ["AccessToken", "DailyStockPrice"]
    await client.aclose()


async def test_a_429_waits_out_its_retry_after(fake_ssi):
    client = ssi_client(fake_ssi)
    await board(client)
    fake_ssi.fail("429", retry_after=1)
    assert await board(client)
    throttled, retried = fake_ssi.calls("DailyStockPrice")[-2:]
    assert retried.at - throttled.at >= 0.95
    await client.aclose()


@pytest.mark.parametrize("failure", ["500", "garbage", "timeout"])
async def test_timeouts_5xx_and_garbage_are_retried_and_then_succeed(fake_ssi, failure):
    client = ssi_client(fake_ssi, timeout=0.3)
    await board(client)
    fake_ssi.fail(failure, times=2, delay=0.5)
    assert await board(client)
    assert len(fake_ssi.calls("DailyStockPrice")) == 4
    await client.aclose()


@pytest.mark.parametrize("failure", ["500", "garbage", "timeout"])
async def test_persistent_failures_end_in_a_retryable_error(fake_ssi, failure):
    client = ssi_client(fake_ssi, timeout=0.3, retries=2)
    await board(client)
    fake_ssi.fail(failure, times=3, delay=0.5)
    with pytest.raises(SSIError) as error:
        await board(client)
    assert error.value.retryable is True
    assert len(fake_ssi.calls("DailyStockPrice")) == 1 + 3
    await client.aclose()


async def test_the_request_budget_is_never_exceeded(fake_ssi):
    client = ssi_client(fake_ssi, max_rps=5)
    for _ in range(6):
        await client.daily_index("VN30", DAY)
    starts = [r.at for r in fake_ssi.requests]  # token request included
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Arrival times at the fake carry the machine's scheduling jitter (one
    # late arrival shortens the next gap): the seven starts span the budget's
    # 6 x 0.2 s, and no two come back to back (without the budget: ~1 ms apart).
    assert len(starts) == 7 and starts[-1] - starts[0] >= 6 * 0.2 - 0.03 and min(gaps) >= 0.05, gaps
    await client.aclose()


def test_backoff_is_full_jitter_capped_at_a_minute():
    delays = [backoff_delay(attempt, 1.0) for attempt in range(1, 20) for _ in range(20)]
    assert all(0 <= d <= BACKOFF_CAP_S for d in delays)
    assert max(delays) > 30  # the cap is reached, not a fixed small delay
    assert all(backoff_delay(1, 1.0) <= 2 for _ in range(50))


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Thu, 26 Nov 2026 03:00:10 GMT", now=1795662000.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_the_jwt_exp_is_read_without_verifying_the_signature():
    assert jwt_exp(make_jwt(1795662000)) == 1795662000
    assert jwt_exp("not-a-jwt") is None


async def test_ssi_status_strings_are_compared_case_insensitively(fake_ssi):
    from apps.feed.ssi import SSIClient

    assert SSIClient._check({"status": "SUCCESS", "data": []})["data"] == []
    assert SSIClient._check({"Status": "NoDataFound", "Data": None})["data"] is None
    with pytest.raises(SSIError):
        SSIClient._check({"status": "Failed", "message": "Invalid parameter"})
