"""docs/openapi.yaml: valid OpenAPI 3.1 (openapi-spec-validator), every
/api/ route is in it, and real answers of the server match what it says for
their status code."""

import json
from pathlib import Path

import pytest
import yaml
from asgiref.sync import async_to_sync
from django.urls import URLPattern, URLResolver, get_resolver
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

DOC = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml").read_text())
BASE = "urn:stocktracker:openapi"
REGISTRY = Registry().with_resource(BASE, DRAFT202012.create_resource(DOC))

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_document_is_valid_openapi():
    validate(DOC)


def _routes(resolver, prefix=""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


def test_every_api_route_is_documented():
    documented = {path.lstrip("/").replace("{stream}", "<str:stream>") for path in DOC["paths"]}
    api = {route for route in _routes(get_resolver()) if route.startswith("api/")}
    assert api and api <= documented, api - documented


def _response_schema(path, status):
    response = DOC["paths"][path]["get"]["responses"][str(status)]
    if "$ref" in response:
        response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    return Draft202012Validator({"$ref": f"{BASE}#" + schema["$ref"].removeprefix("#")}, registry=REGISTRY)


def _matches(path, response):
    errors = [e.message for e in _response_schema(path, response.status_code).iter_errors(json.loads(response.content))]
    assert errors == [], (path, response.status_code, errors)


def test_real_answers_match_the_document(client, owner, owner_token):
    from apps.accounts.models import ApiToken
    from apps.streams.publish import publish_snapshot, publish_topic

    @async_to_sync
    async def publish():
        await publish_snapshot("market", {"stocks": []}, day="2026-11-27", source_ms=1)
        await publish_topic("status", {"HOSE": "continuous"}, None, day="2026-11-27", source_ms=1)

    publish()
    good = {"HTTP_AUTHORIZATION": f"Bearer {owner_token[1]}"}
    bad = {"HTTP_AUTHORIZATION": "Bearer stk_" + "A" * 46}
    index_only = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner, label='index', streams=['index'])[1]}"}
    v1, v2 = "/api/v1/snapshot/{stream}", "/api/v2/snapshot"
    for response in (client.get("/api/v1/snapshot/market", **good), client.get("/api/v1/snapshot/market", **bad)):
        _matches(v1, response)
    _matches(v1, client.get("/api/v1/snapshot/market", **index_only))
    _matches(v1, client.get("/api/v1/snapshot/market"))
    for params, headers in (
        ({"topic": "status"}, good),
        ({"topic": "status"}, bad),
        ({"topic": "board:VN30"}, index_only),
        ({"topic": "nonsense"}, good),
        ({"topic": "status"}, {}),
    ):
        _matches(v2, client.get(v2, params, **headers))
