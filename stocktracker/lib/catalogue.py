"""The streams a client can follow: one list for models, routing, the feed and payloads."""

MARKET, FOREIGN, INDEX = "market", "foreign", "index"

# (name, label) in display order; the name is the URL part (/ws/<name>) and the
# `stream` field of every frame.
STREAM_CHOICES = ((MARKET, "Market board"), (FOREIGN, "Foreign flow"), (INDEX, "Index board"))
STREAMS = tuple(name for name, _ in STREAM_CHOICES)
