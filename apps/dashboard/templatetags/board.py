from django import template

from .. import formatting

register = template.Library()

for _name in ("kprice", "signed_kprice", "pct", "number", "points", "signed_points", "compact", "short", "billions"):
    register.filter(_name, getattr(formatting, _name))


@register.filter
def signed_billions(value):
    return formatting.billions(value, signed=True)


@register.filter
def sign_class(value):
    return formatting.sign_class(value)


@register.filter
def phase_label(phase):
    return formatting.PHASES.get(phase, phase or "–")


@register.simple_tag
def price_class(price, row):
    """Colour of `price` against the row's reference, ceiling and floor."""
    if not row:
        return ""
    return formatting.price_class(price, row.get("ref"), row.get("ceiling"), row.get("floor"))


@register.filter
def abs_value(value):
    return abs(value) if value is not None else None


@register.inclusion_tag("dashboard/_sparkline.html")
def sparkline(index):
    path, prior_y = formatting.sparkline_path(index.get("points"), index.get("prior"))
    return {"path": path, "prior_y": prior_y, "cls": formatting.sign_class(index.get("change"))}


@register.simple_tag
def book(row, side):
    """The three levels of one side as board cells read them: bids 3, 2, 1
    (best next to the last price), asks 1, 2, 3; missing levels are empty."""
    levels = (row or {}).get(f"{side}s") or []
    cells = []
    for n in (3, 2, 1) if side == "bid" else (1, 2, 3):
        price, volume = levels[n - 1] if len(levels) >= n else (None, None)
        cells.append({"field": f"{side}{n}", "price": price, "volume": volume, "cls": price_class(price, row)})
    return cells


@register.simple_tag
def book_rows(row):
    """Levels 1-3 side by side (the futures panel's order book)."""
    bids, asks = (row or {}).get("bids") or [], (row or {}).get("asks") or []
    rows = []
    for n in range(3):
        bid, bid_vol = bids[n] if n < len(bids) else (None, None)
        ask, ask_vol = asks[n] if n < len(asks) else (None, None)
        rows.append(
            {
                "n": n + 1,
                "bid": bid,
                "bid_vol": bid_vol,
                "ask": ask,
                "ask_vol": ask_vol,
                "bid_cls": price_class(bid, row),
                "ask_cls": price_class(ask, row),
            }
        )
    return rows
