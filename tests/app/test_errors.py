"""Requests that are wrong in form: a body that is not UTF-8 or not JSON, invalid fields, unknown routes.
Every error answers one shape, {"detail": str, "code": str, "errors": [{"field", "message"}]}."""

from __future__ import annotations

import json

from tests.app.helpers import assert_error_shape
from tests.conftest import RunningService

LATIN1 = "Grüße aus Köln".encode("latin-1")


def test_non_utf8_body_says_so(hardened: RunningService) -> None:
    body = b'{"documents": [{"id": "a", "text": "' + LATIN1 + b'"}]}'
    response = hardened.client.post("/index", content=body, headers={"content-type": "application/json"})
    error = assert_error_shape(response, 400)
    assert "not UTF-8" in error["detail"], error


def test_missing_json_content_type_says_so(hardened: RunningService) -> None:
    # What `curl -d '{...}'` sends: application/x-www-form-urlencoded.
    response = hardened.client.post(
        "/index",
        content=json.dumps({"documents": [{"id": "a", "text": "t"}]}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    error = assert_error_shape(response, 415)
    assert "Content-Type: application/json" in error["detail"]


def test_validation_errors_name_fields_and_rules_not_regexes(hardened: RunningService) -> None:
    response = hardened.client.post("/index", json={"documents": [{"id": "a b", "text": "t", "lang": "English"}]})
    error = assert_error_shape(response, 422)
    fields = {e["field"]: e["message"] for e in error["errors"]}
    assert set(fields) == {"documents[0].id", "documents[0].lang"}, fields
    assert "letters, digits" in fields["documents[0].id"]
    assert "language code" in fields["documents[0].lang"]
    assert "^" not in error["detail"] and "documents[0].id" in error["detail"]
    missing = assert_error_shape(hardened.client.post("/search", json={"k": 3}), 422)
    assert missing["errors"] == [{"field": "query", "message": "is required"}]


def test_every_error_has_the_same_shape(hardened: RunningService) -> None:
    assert_error_shape(hardened.client.get("/no/such/route"), 404)
    assert_error_shape(hardened.client.put("/search"), 405)
    assert_error_shape(hardened.client.get("/index/missing-doc"), 404)
    assert_error_shape(hardened.client.get("/jobs", params={"limit": 0}), 422)
    assert_error_shape(hardened.client.post("/index", content=b"{", headers={"content-type": "application/json"}), 422)


def test_huge_jobs_offset_is_a_422_not_a_500(hardened: RunningService) -> None:
    error = assert_error_shape(hardened.client.get("/jobs", params={"offset": 10**19}), 422)
    assert error["errors"][0]["field"] == "offset"
    assert hardened.client.get("/jobs", params={"offset": 10**9}).status_code == 200


def test_docs_pages_load_nothing_from_the_internet(hardened: RunningService) -> None:
    import re

    for page in ("/docs", "/redoc"):
        html = hardened.client.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
        assert assets, page
        for asset in assets:
            assert not asset.startswith(("http://", "https://", "//")), (page, asset)
            assert hardened.client.get(asset).status_code == 200, (page, asset)
