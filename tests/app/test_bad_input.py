"""Every bad input gets its 4xx with a reason, and the index is unchanged afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningService, running_service

GOOD = {"id": "keep", "text": "the cat sleeps on the warm windowsill", "lang": "en", "metadata": {"k": "v"}}


@pytest.fixture(scope="module")
def limited(module_settings: Any) -> Any:
    settings = module_settings(
        "badinput",
        max_query_chars=50,
        max_k=20,
        max_docs_per_request=3,
        max_text_chars=100,
        max_metadata_bytes=40,
        max_body_bytes=4096,
    )
    with running_service(settings) as service:
        assert service.index([GOOD]).status_code == 200
        yield service


def _state(service: RunningService) -> tuple[int, int, str]:
    stats = service.client.get("/index/stats").json()
    return stats["documents"], stats["vectors"], stats["log_offset"]


def doc(**fields: Any) -> dict[str, Any]:
    return {"id": "new", "text": "die katze schläft", **fields}


BAD_WRITES = [
    ("empty text", {"documents": [doc(text="")]}, 422, "text"),
    ("whitespace text", {"documents": [doc(text="   \n")]}, 422, "text is empty"),
    ("text over the limit", {"documents": [doc(text="x" * 101)]}, 422, "limit is 100"),
    ("id with a space", {"documents": [doc(id="a b")]}, 422, "letters, digits"),
    ("id with a slash", {"documents": [doc(id="a/b")]}, 422, "letters, digits"),
    ("empty id", {"documents": [doc(id="")]}, 422, "letters, digits"),
    ("language code", {"documents": [doc(lang="English")]}, 422, "language code such as"),
    ("duplicate ids", {"documents": [doc(), doc()]}, 422, "more than once"),
    ("too many documents", {"documents": [doc(id=f"n{i}") for i in range(4)]}, 422, "limit is 3"),
    ("nested metadata", {"documents": [doc(metadata={"a": {"b": 1}})]}, 422, "flat object"),
    ("list metadata", {"documents": [doc(metadata={"a": [1, 2]})]}, 422, "flat object"),
    ("metadata not an object", {"documents": [doc(metadata=[1])]}, 422, "dict"),
    ("metadata too large", {"documents": [doc(metadata={"a": "x" * 50})]}, 422, "limit is 40"),
    ("no documents", {"documents": []}, 422, "at least 1"),
    ("unknown field", {"documents": [doc(colour="red")]}, 422, "extra"),
    ("not JSON", "not json", 422, "JSON"),
    # Python's JSON reader takes these; JSON has no such numbers, and stored they would read back as null.
    ("NaN metadata", '{"documents": [{"id": "new", "text": "t", "metadata": {"a": NaN}}]}', 422, "finite"),
    ("Infinity metadata", '{"documents": [{"id": "new", "text": "t", "metadata": {"a": -Infinity}}]}', 422, "finite"),
    ("overflowing metadata", '{"documents": [{"id": "new", "text": "t", "metadata": {"a": 1e400}}]}', 422, "finite"),
]


@pytest.mark.parametrize(("case", "body", "status", "reason"), BAD_WRITES, ids=[c[0] for c in BAD_WRITES])
def test_bad_writes_are_refused_and_change_nothing(
    limited: RunningService, case: str, body: Any, status: int, reason: str
) -> None:
    before = _state(limited)
    if isinstance(body, str):
        response = limited.client.post("/index", content=body, headers={"content-type": "application/json"})
    else:
        response = limited.client.post("/index", json=body)
    assert response.status_code == status, response.text
    assert reason.lower() in response.text.lower()
    assert _state(limited) == before


def test_body_over_the_limit_is_413(limited: RunningService) -> None:
    before = _state(limited)
    big = {"documents": [doc(text="y" * 5000)]}
    assert limited.client.post("/index", json=big).status_code == 413
    # without Content-Length (chunked upload) too

    def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    response = limited.client.post("/index", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert _state(limited) == before


BAD_SEARCHES = [
    ("empty query", {"query": ""}, "query is empty"),
    ("whitespace query", {"query": "  \t"}, "query is empty"),
    ("query over the limit", {"query": "q" * 51}, "limit is 50"),
    ("k zero", {"query": "cat", "k": 0}, "between 1 and 20"),
    ("k over the maximum", {"query": "cat", "k": 21}, "between 1 and 20"),
    ("bad language", {"query": "cat", "langs": ["EN"]}, "language code such as"),
    ("nested filter", {"query": "cat", "filter": {"a": {"b": 1}}}, "flat object"),
    # Types are as strict as the API description says: no coercion from booleans, strings or floats.
    ("k true", {"query": "cat", "k": True}, "valid integer"),
    ("k a string", {"query": "cat", "k": "3"}, "valid integer"),
    ("k a float", {"query": "cat", "k": 2.0}, "valid integer"),
    ("query a number", {"query": 5}, "valid string"),
]


@pytest.mark.parametrize(("case", "body", "reason"), BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES])
def test_bad_searches_get_422(limited: RunningService, case: str, body: dict[str, Any], reason: str) -> None:
    response = limited.client.post("/search", json=body)
    assert response.status_code == 422, response.text
    assert reason.lower() in response.text.lower()


def test_bad_get_search_parameters(limited: RunningService) -> None:
    for params in ({"q": ""}, {"q": "cat", "k": 0}, {"q": "cat", "k": "many"}, {"q": "cat", "lang": "de,EN!"}, {}):
        assert limited.client.get("/search", params=params).status_code == 422, params


# A refusal by a limit (not by the schema) still names the field at fault, in each route's own names.
FIELDS_AT_FAULT = [
    ("GET", "/search", {"params": {"q": "cat", "k": 0}}, "k"),
    ("GET", "/search", {"params": {"q": "  "}}, "q"),
    ("POST", "/search", {"json": {"query": "  "}}, "query"),
    ("POST", "/search", {"json": {"query": "cat", "k": 21}}, "k"),
    ("POST", "/index", {"json": {"documents": [{"id": "a", "text": "x"}, {"id": "b", "text": " "}]}},
     "documents[1].text"),
    ("POST", "/index", {"json": {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}},
     "documents[1].id"),
    ("POST", "/index/delete", {"json": {"ids": ["a", "b", "a"]}}, "ids[2]"),
]


@pytest.mark.parametrize(("method", "path", "request_", "field"), FIELDS_AT_FAULT)
def test_a_limits_422_names_the_field(
    limited: RunningService, method: str, path: str, request_: dict[str, Any], field: str
) -> None:
    before = _state(limited)
    response = limited.client.request(method, path, **request_)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": field, "message": response.json()["detail"]}]
    assert _state(limited) == before


@pytest.mark.parametrize("k", ["2.0", "+3", " 3", "3 ", "1e1", "\u0663", "-1"])
def test_get_integers_are_as_strict_as_the_bodys(limited: RunningService, k: str) -> None:
    """The JSON body refuses 2.0 for k; the query string refuses '2.0', '+3', ' 3' and the rest alike."""
    k = k.encode().decode("unicode_escape")  # the Arabic-Indic three, a digit to str.isdigit
    assert limited.client.post("/search", json={"query": "cat", "k": 2.0}).status_code == 422
    response = limited.client.get("/search", params={"q": "cat", "k": k})
    assert response.status_code == 422, (k, response.text)
    assert response.json()["errors"][0]["field"] == "k"
    assert limited.client.get("/jobs", params={"limit": k}).status_code == 422
    assert limited.client.get("/search", params={"q": "cat", "k": "3"}).status_code == 200


def test_non_finite_numbers_are_refused_in_every_body(limited: RunningService) -> None:
    for body in ('{"query": "cat", "filter": {"a": NaN}}', '{"query": "cat", "filter": {"a": Infinity}}'):
        response = limited.client.post("/search", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and "finite" in response.text, response.text
    # A job body: a float of the training contract and one of the adapters' configuration.
    for body in ('{"dataset": "d", "scale": NaN}', '{"dataset": "d", "adapter_config": {"scale": Infinity}}'):
        response = limited.client.post("/jobs/finetune", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and "finite" in response.text, response.text


def test_a_body_under_an_empty_content_type_is_415(limited: RunningService) -> None:
    before = _state(limited)
    body = '{"documents": [{"id": "new", "text": "t"}]}'
    response = limited.client.post("/index", content=body, headers={"content-type": ""})
    assert response.status_code == 415 and "Content-Type: application/json" in response.text, response.text
    assert _state(limited) == before


def test_bad_ids_on_delete(limited: RunningService) -> None:
    before = _state(limited)
    assert limited.client.post("/index/delete", json={"ids": ["keep", "keep"]}).status_code == 422
    assert limited.client.post("/index/delete", json={"ids": []}).status_code == 422
    assert limited.client.delete("/index/bad%20id").status_code == 422
    assert _state(limited) == before
    assert limited.search_ids(GOOD["text"], k=1) == ["keep"]
