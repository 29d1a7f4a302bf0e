"""docs/asyncapi.yaml as JSON Schema validators, for tests that check real frames.

The document's schemas are AsyncAPI Schema objects, a superset of JSON Schema
draft 07 (AsyncAPI 3's default schema format), so draft 07 validates them.
For the tests every object schema under components/schemas is closed
(additionalProperties: false unless it says otherwise): a field the server
sends but the document does not describe fails, as does a missing or mistyped one.
"""

import copy
import json
from pathlib import Path

import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
BASE = "urn:stocktracker:asyncapi"


def _closed(doc):
    doc = copy.deepcopy(doc)

    def close(schema):
        if isinstance(schema, dict):
            if schema.get("type") == "object" and "properties" in schema:
                schema.setdefault("additionalProperties", False)
            for value in schema.values():
                close(value)
        elif isinstance(schema, list):
            for value in schema:
                close(value)

    close(doc["components"]["schemas"])
    return doc


REGISTRY = Registry().with_resource(BASE, DRAFT7.create_resource(_closed(DOC)))


def validator(pointer):
    """A draft-07 validator for the schema at `pointer` (e.g. /components/schemas/Feed)."""
    return Draft7Validator(
        {"$ref": f"{BASE}#{pointer}"}, registry=REGISTRY, format_checker=Draft7Validator.FORMAT_CHECKER
    )


def deref(ref):
    node = DOC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def server_messages(stream):
    """{frame type: payload pointer} for the frames the server sends on `stream`'s channel."""
    channel = f"#/channels/{stream}"
    operations = DOC["operations"].values()
    operation = next(op for op in operations if op["action"] == "send" and op["channel"]["$ref"] == channel)
    found = {}
    for entry in operation["messages"]:
        channel_message = deref(entry["$ref"])
        ref = channel_message["$ref"]
        message = deref(ref)
        found[message["name"]] = ref.removeprefix("#") + "/payload"
    return found


def errors(frame, stream):
    """Every way `frame` (parsed JSON) breaks the document's schema for its type on `stream`."""
    messages = server_messages(stream)
    if frame.get("type") not in messages:
        return [f"{frame.get('type')!r} is not a frame the document lists for {stream}"]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(messages[frame["type"]]).iter_errors(frame)
    ]


def example_payloads():
    """(message name, payload pointer, example payload) for every message example;
    an example may be an external file ($ref relative to docs/)."""
    for key, message in DOC["components"]["messages"].items():
        for example in message.get("examples", []):
            payload = example["payload"]
            if "$ref" in payload:
                payload = json.loads((DOCS / payload["$ref"]).read_text())
            yield key, f"/components/messages/{key}/payload", payload
