from django import template

from .. import formatting

register = template.Library()

for _name in ("kprice", "signed_kprice", "pct", "number", "points", "signed_points", "compact", "billions"):
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
