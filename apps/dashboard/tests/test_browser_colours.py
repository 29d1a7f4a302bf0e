"""Ceiling, floor and reference colours on frames with known prices, rendered
by the server and then changed live (no feed: the test publishes)."""

import pytest

from . import samples
from .conftest import colour_of, expected_class, log_in, rows

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def by_symbol(page):
    return {r["symbol"]: r for r in rows(page)}


def test_stocks_at_ceiling_floor_and_reference_take_their_colours(server, owner, page):
    samples.publish_all()
    log_in(page, server)
    board = by_symbol(page)
    expected = {"ACB": "c-ceil", "FPT": "c-floor", "HPG": "c-ref", "VCB": "c-up", "VNM": "c-down", "SSI": None}
    for symbol, cls in expected.items():
        assert expected_class(board[symbol]) == cls
        assert colour_of(board[symbol]["lastClasses"]) == cls, symbol
    assert page.text_content('tr[data-symbol="ACB"] [data-field=last]') == "24.50"
    colours = page.evaluate(
        """() => Object.fromEntries(['c-ceil', 'c-floor', 'c-ref', 'c-up', 'c-down'].map(c =>
            [c, getComputedStyle(document.querySelector('#quotes tbody .' + c)).color]))"""
    )
    assert colours == {
        "c-ceil": "rgb(255, 77, 255)",  # purple
        "c-floor": "rgb(47, 216, 236)",  # cyan
        "c-ref": "rgb(245, 197, 24)",  # yellow
        "c-up": "rgb(23, 211, 95)",  # green
        "c-down": "rgb(255, 69, 69)",  # red
    }

    # Live: ACB falls off the ceiling, FPT rebounds to reference, HPG hits the floor.
    page.wait_for_function("document.querySelector('[data-conn=market]').dataset.state === 'live'")
    moved = samples.market()
    prices = {"ACB": 23500, "FPT": 100000, "HPG": 24200}
    for row in moved["stocks"]:
        if row["symbol"] in prices:
            row.update(last=prices[row["symbol"]], change=prices[row["symbol"]] - row["ref"])
    samples.publish("market", moved)
    page.wait_for_function("document.querySelector('tr[data-symbol=ACB] [data-field=last]').dataset.value === '23500'")
    board = by_symbol(page)
    assert colour_of(board["ACB"]["lastClasses"]) == "c-up"
    assert colour_of(board["FPT"]["lastClasses"]) == "c-ref"
    assert colour_of(board["HPG"]["lastClasses"]) == "c-floor"
    assert page.locator('tr[data-symbol="ACB"] [data-field=last].flash-down').count() == 1
    # The browser formats like the server: thousands with two decimals, signed changes.
    assert page.text_content('tr[data-symbol="ACB"] [data-field=last]') == "23.50"
    assert page.text_content('tr[data-symbol="ACB"] [data-field=change]') == "+0.60"
    assert page.text_content('tr[data-symbol="HPG"] [data-field=change]') == "-1.80"
    assert page.locator("[data-role=phase]").text_content() == "Continuous"


def test_without_javascript_the_server_rendered_board_is_complete(server, owner, browser):
    samples.publish_all()
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        log_in(page, server)
        assert page.locator("#quotes tbody tr[data-symbol]").count() == 6
        assert colour_of(by_symbol(page)["ACB"]["lastClasses"]) == "c-ceil"
        assert page.locator("#indices .index-card svg path").count() == 5
        assert "premium" in page.text_content("#futures")
        assert "Top net buyers" in page.text_content("#foreign")
    finally:
        context.close()
