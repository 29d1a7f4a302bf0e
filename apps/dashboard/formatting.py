"""How board numbers look and which colour they take.

static/dashboard/format.js implements the same rules for live updates; the
browser tests check that both agree on every row.
"""

PHASES = {
    "pre_open": "Pre-open",
    "ato": "ATO",
    "continuous": "Continuous",
    "lunch": "Lunch break",
    "atc": "ATC",
    "plo": "PLO",
    "closed": "Closed",
}


def _num(value):
    """A number, or None for unknown (None, '' from a missing template variable, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def price_class(price, ref, ceiling=None, floor=None):
    """Vietnamese board colour of `price` against the day's band:
    ceiling purple, floor cyan, reference yellow, up green, down red."""
    price, ref, ceiling, floor = _num(price), _num(ref), _num(ceiling), _num(floor)
    if price is None or ref is None:
        return ""
    if ceiling is not None and price >= ceiling:
        return "c-ceil"
    if floor is not None and price <= floor:
        return "c-floor"
    if price > ref:
        return "c-up"
    if price < ref:
        return "c-down"
    return "c-ref"


def sign_class(change):
    change = _num(change)
    if change is None:
        return ""
    return "c-up" if change > 0 else "c-down" if change < 0 else "c-ref"


def kprice(value):
    """VND price in thousands with two decimals: 24500 -> '24.50'."""
    value = _num(value)
    if value is None:
        return ""
    return f"{value / 1000:,.2f}"


def signed_kprice(value):
    value = _num(value)
    if value is None:
        return ""
    return f"{value / 1000:+,.2f}"


def pct(value):
    value = _num(value)
    if value is None:
        return ""
    return f"{value:+.2f}%"


def number(value):
    """Shares or contracts with thousands separators."""
    value = _num(value)
    if value is None:
        return ""
    return f"{round(value):,}"


def points(value, digits=2):
    value = _num(value)
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def signed_points(value, digits=2):
    value = _num(value)
    if value is None:
        return ""
    return f"{value:+,.{digits}f}"


_SUFFIXES = ((1e9, "B"), (1e6, "M"), (1e3, "K"))


def _scaled(value, digits):
    """`value` in K/M/B with `digits(|scaled|)` decimals; "" when not a number."""
    value = _num(value)
    if value is None:
        return ""
    for limit, suffix in _SUFFIXES:
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.{digits(abs(scaled))}f}{suffix}"
    return f"{round(value)}"


def compact(value):
    """Large counts for narrow cells: 1234567 -> '1.23M'."""
    return _scaled(value, lambda _: 2)


def short(value):
    """Three significant digits for the board's narrowest cells: 246400 -> '246K',
    46200 -> '46.2K', 1330000 -> '1.33M'."""
    return _scaled(value, lambda a: 2 if a < 9.995 else 1 if a < 99.95 else 0)


def billions(value, signed=False):
    """VND amounts in billions (tỷ đồng) with two decimals."""
    value = _num(value)
    if value is None:
        return ""
    return f"{value / 1e9:{'+' if signed else ''},.2f}"


def sparkline_path(pts, prior=None, width=120, height=32, pad=2):
    """SVG path data for intraday [[epoch_ms, value], ...] points, and the y of
    the prior close (None if unknown). The y range includes the prior close."""
    pts = [(t, v) for t, v in (pts or []) if t is not None and v is not None]
    if len(pts) < 2:
        return "", None
    times = [t for t, _ in pts]
    values = [v for _, v in pts] + ([prior] if prior is not None else [])
    t0, t1 = min(times), max(times)
    lo, hi = min(values), max(values)
    span_t = (t1 - t0) or 1
    span_v = (hi - lo) or 1

    def y(v):
        return round(pad + (hi - v) / span_v * (height - 2 * pad), 1)

    parts = []
    for i, (t, v) in enumerate(pts):
        x = round(pad + (t - t0) / span_t * (width - 2 * pad), 1)
        parts.append(f"{'M' if i == 0 else 'L'}{x} {y(v)}")
    return "".join(parts), (y(prior) if prior is not None else None)
