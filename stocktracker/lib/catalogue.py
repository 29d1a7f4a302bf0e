"""The streams a client can follow: one list for models, routing and payloads."""

# (name, label) in display order; the name is the URL part (/ws/<name>) and the
# `stream` field of every frame.
STREAM_CHOICES = (("market", "Market board"), ("foreign", "Foreign flow"), ("index", "Index board"))
STREAMS = tuple(name for name, _ in STREAM_CHOICES)
