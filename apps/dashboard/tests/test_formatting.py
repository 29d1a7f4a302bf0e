import pytest

from apps.dashboard import formatting as f


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        (24500, "c-ceil"),
        (24600, "c-ceil"),
        (21300, "c-floor"),
        (22900, "c-ref"),
        (23000, "c-up"),
        (22800, "c-down"),
        (None, ""),
    ],
)
def test_a_price_takes_the_colour_of_its_place_in_the_band(price, expected):
    assert f.price_class(price, 22900, 24500, 21300) == expected


def test_unknown_reference_means_no_colour():
    assert f.price_class(24500, None, 24500, 21300) == ""


def test_prices_show_in_thousands_with_two_decimals():
    assert f.kprice(24500) == "24.50"
    assert f.kprice(123400) == "123.40"
    assert f.kprice(9990) == "9.99"
    assert f.signed_kprice(-350) == "-0.35"
    assert f.signed_kprice(0) == "+0.00"
    assert f.kprice(None) == f.kprice("") == ""


def test_large_numbers_are_compact_or_grouped():
    assert f.number(1234500) == "1,234,500"
    assert f.compact(123_456_789) == "123.46M"
    assert f.compact(2_500_000_000) == "2.50B"
    assert [f.short(v) for v in (246_400, 46_200, 9_000, 1_330_000, 99_960, 640)] == [
        "246K", "46.2K", "9.00K", "1.33M", "100K", "640"]  # fmt: skip
    assert f.billions(-12_345_000_000, signed=True) == "-12.35"
    assert f.pct(1.456) == "+1.46%"


def test_the_sparkline_spans_the_box_and_includes_the_prior_close():
    path, prior_y = f.sparkline_path([[0, 10.0], [60_000, 12.0], [120_000, 11.0]], prior=9.0)
    assert path.startswith("M2.0 ")
    assert path.split("L")[-1].startswith("118.0")
    assert prior_y == 30.0  # the lowest value sits on the bottom edge
    assert f.sparkline_path([[0, 1.0]]) == ("", None)
