"""The board shows three bid and ask levels as a Vietnamese board does
(iBoard's "Giá/KL mua 3-1 | khớp lệnh | Giá/KL bán 1-3"), coloured by the
price rules, and flashes every cell whose value changed."""

import copy

import pytest

from . import samples
from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def cells(page, symbol):
    return page.eval_on_selector_all(
        f'tr[data-symbol="{symbol}"] td[data-field]',
        "tds => tds.map(td => [td.dataset.field, td.textContent, [...td.classList]])",
    )


def test_three_levels_a_side_sit_around_the_match_with_their_colours(server, owner, page):
    samples.publish_all()
    log_in(page, server)
    fields = [field for field, _, _ in cells(page, "VCB")]
    order = ["bid3", "bid3_vol", "bid2", "bid2_vol", "bid1", "bid1_vol", "last", "last_volume", "change",
             "change_pct", "ask1", "ask1_vol", "ask2", "ask2_vol", "ask3", "ask3_vol"]  # fmt: skip
    start = fields.index("bid3")
    assert fields[start : start + len(order)] == order
    vcb = {field: (text, classes) for field, text, classes in cells(page, "VCB")}  # ref 60.00, last 61.20
    assert vcb["bid1"][0] == "61.20" and vcb["bid1_vol"][0] == "10,000" and vcb["bid3"][0] == "61.00"
    assert vcb["ask1"][0] == "61.30" and vcb["ask3_vol"][0] == "15,000"
    assert "c-up" in vcb["bid1"][1] and "c-up" in vcb["ask1_vol"][1]
    acb = {field: (text, classes) for field, text, classes in cells(page, "ACB")}  # at the ceiling: no sellers
    assert "c-ceil" in acb["bid1"][1] and acb["ask1"][0] == "" and acb["ask1_vol"][0] == ""
    header = page.text_content("#quotes thead")
    assert "Bên mua" in header and "Bên bán" in header and "Khớp lệnh" in header
    assert page.text_content("#futures .fut-book [data-field=bid1]") == "1,359.3"
    assert page.text_content("#futures [data-field=session]") == "LO"
    assert page.get_attribute('tr[data-symbol="VCB"] [data-field=foreign_room]', "title") == "of 400M"


def test_a_cell_flashes_when_its_value_changes_and_only_then(server, owner, page):
    samples.publish_all()
    log_in(page, server)
    page.wait_for_function("document.querySelector('[data-conn=market]').dataset.state === 'live'")
    moved = samples.market()
    vcb = next(s for s in moved["stocks"] if s["symbol"] == "VCB")
    vcb["bids"] = copy.deepcopy(vcb["bids"])
    vcb["bids"][0][1] = 99_900  # more buyers at the best bid
    vcb["asks"][0][0] = 61_400  # the best ask moves up a tick
    vcb["last_volume"] = 4_500
    moved["futures"]["asks"][0] = [1359.5, 9]
    samples.publish("market", moved)
    page.wait_for_function(
        "document.querySelector('tr[data-symbol=VCB] [data-field=bid1_vol]').dataset.value === '99900'"
    )
    row = 'tr[data-symbol="VCB"]'
    assert page.locator(f"{row} [data-field=bid1_vol].flash").count() == 1
    assert page.locator(f"{row} [data-field=ask1].flash-up").count() == 1
    assert page.locator(f"{row} [data-field=last_volume].flash").count() == 1
    assert page.text_content(f"{row} [data-field=bid1_vol]") == "99,900"
    # Nothing else in the row changed, so nothing else flashes; neither do other rows.
    flashing = page.eval_on_selector_all(f"{row} td[class*=flash]", "tds => tds.map(td => td.dataset.field)")
    assert sorted(flashing) == ["ask1", "bid1_vol", "last_volume"]
    assert page.locator('tr[data-symbol="FPT"] td[class*=flash]').count() == 0
    assert page.locator("#futures [data-field=ask1][class*=flash]").count() == 1
    assert page.text_content("#futures [data-field=ask1_vol]") == "9"
    # The highlight is short: it is gone before the next second's frame.
    page.wait_for_timeout(900)
    assert page.locator(f"{row} td[class*=flash]").count() == 0


def test_without_javascript_the_server_renders_the_levels(server, owner, browser):
    samples.publish_all()
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        log_in(page, server)
        vcb = {field: text for field, text, _ in cells(page, "VCB")}
        assert (vcb["bid1"], vcb["ask1"], vcb["last_volume"], vcb["session"]) == ("61.20", "61.30", "1,200", "LO")
        assert page.text_content("#futures .fut-book [data-field=ask3]") == "1,359.6"
    finally:
        context.close()
