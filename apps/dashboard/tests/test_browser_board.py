"""A user logs in and watches the real feed (simulator, demo clock) in Chromium."""

import pytest

from .conftest import ARTIFACTS, colour_of, expected_class, log_in, rows, save_metrics, stream_state

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_a_user_logs_in_and_sees_the_board_then_live_updates(server, feed, owner, page):
    log_in(page, server)

    # Server-rendered first: the page view woke the feed and waited for it.
    assert len(rows(page)) == 30
    assert page.locator("#indices .index-card").count() == 5
    assert page.locator("#futures [data-field=basis]").count() == 1
    assert page.locator("[data-role=simulated]").is_visible()

    # Then live: every stream's socket is welcomed and data moves.
    for stream in ("market", "foreign", "index"):
        page.wait_for_function(f"document.querySelector('[data-conn={stream}]').dataset.state === 'live'")
    before = {r["symbol"]: r for r in rows(page)}
    page.wait_for_function("window.stkMetrics.firstUpdate !== null")
    page.wait_for_function(
        """before => [...document.querySelectorAll('#quotes tbody tr[data-symbol]')].some(tr =>
            [...tr.querySelectorAll('[data-field]')].some(td =>
                td.dataset.value !== before[tr.dataset.symbol][td.dataset.field]))""",
        arg=before,
    )
    assert page.locator("#quotes td.flash-up, #quotes td.flash-down, #quotes td.flash").count() > 0
    assert page.text_content("[data-role=feed-state]") == "live"
    assert "s ago" in page.text_content("[data-role=updated]")
    assert stream_state(page, "market") == "live"


def test_every_row_is_coloured_by_its_own_numbers(server, feed, owner, page):
    log_in(page, server)
    # The demo day opens with ATO (no last prices yet): wait for continuous trading.
    page.wait_for_function(
        "[...document.querySelectorAll('#quotes td[data-field=last]')].filter(td => td.dataset.value).length >= 20"
    )
    checked = 0
    for row in rows(page):
        expected = expected_class(row)
        assert colour_of(row["lastClasses"]) == expected, row
        assert colour_of(row["symbolClasses"]) == expected, row
        checked += expected is not None
    assert checked >= 20


def test_columns_sort_by_a_click_and_stay_sorted_through_updates(server, feed, owner, page):
    log_in(page, server)
    page.click("#quotes th[data-sort=change_pct]")
    assert page.get_attribute("#quotes th[data-sort=change_pct]", "aria-sort") == "descending"

    def pcts():
        # One read of the table (one evaluate): two reads could straddle an update.
        return [float(r["change_pct"]) for r in rows(page) if r["change_pct"] not in ("", None)]

    values = pcts()
    assert values == sorted(values, reverse=True)
    # Updates move some symbols past others: the rows must follow.
    page.wait_for_function("window.stkMetrics.firstUpdate !== null")
    before = [r["symbol"] for r in rows(page)]
    page.wait_for_function(
        "order => [...document.querySelectorAll('#quotes tbody tr[data-symbol]')]"
        ".map(tr => tr.dataset.symbol).join() !== order",
        arg=",".join(before),
        timeout=20_000,
    )
    values = pcts()
    assert values == sorted(values, reverse=True)
    page.click("#quotes th[data-sort=change_pct]")
    values = pcts()
    assert values == sorted(values)
    page.click("#quotes th[data-sort=symbol]")
    symbols = [r["symbol"] for r in rows(page)]
    assert symbols == sorted(symbols)


def test_screenshot_page_weight_and_time_to_first_live_update(server, feed, owner, page):
    log_in(page, server)
    page.wait_for_function(  # let the demo day reach continuous trading so the board shows colour
        "document.querySelectorAll('#quotes td[data-field=last][data-value=\"\"]').length < 5"
    )
    sizes = {}

    def record(response):
        kind = response.request.resource_type
        if kind in ("document", "script", "stylesheet"):
            body = response.body()
            encoded = response.request.sizes()["responseBodySize"]
            sizes[response.url] = (kind, len(body), encoded)

    page.on("response", record)
    page.reload()
    page.wait_for_function("window.stkMetrics.firstUpdate !== null && window.stkMetrics.firstFrame !== null")
    timing = page.evaluate(
        """() => ({
            first_socket_frame_ms: window.stkMetrics.firstFrame,
            first_live_update_ms: window.stkMetrics.firstUpdate,
            first_update_via: window.stkMetrics.firstUpdateVia,
            dom_content_loaded_ms: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
        })"""
    )
    page.wait_for_timeout(800)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "board.png"
    page.screenshot(path=str(shot), full_page=True)

    weight = {
        kind: sum(size for k, size, _ in sizes.values() if k == kind) for kind in ("document", "script", "stylesheet")
    }
    weight["total"] = sum(weight.values())
    weight["total_transferred"] = sum(enc for _, _, enc in sizes.values())
    weight["files"] = len(sizes)
    save_metrics("page_weight_bytes", weight)
    save_metrics("timing_ms", timing)
    print("page weight", weight, "timing", timing)
    assert weight["total"] < 120_000
    assert timing["first_live_update_ms"] < 5_000
