"""A write's `wait`: the default read-your-writes deadline, a longer one, or none at all (202 with the log offset),
and GET /index/applied to wait on an offset later."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningService, running_service

DOC = {"id": "w1", "text": "the cat sleeps on the warm windowsill", "lang": "en"}


@pytest.fixture(scope="module")
def service(module_settings: Any) -> Any:
    with running_service(module_settings("writewait")) as running:
        yield running


def ids_found(service: RunningService, text: str) -> list[str]:
    return [hit["id"] for hit in service.client.post("/search", json={"query": text, "k": 5}).json()["hits"]]


def test_a_write_that_does_not_wait_is_accepted_and_can_be_waited_on(service: RunningService) -> None:
    response = service.client.post("/index", params={"wait": "false"}, json={"documents": [DOC]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["indexed"] == 1 and body["applied"] is False and body["log_offset"]
    waited = service.client.get("/index/applied", params={"offset": body["log_offset"], "wait": "30"})
    assert waited.status_code == 200 and waited.json()["applied"] is True, waited.text
    assert "w1" in ids_found(service, DOC["text"])

    gone = service.client.post("/index/delete", params={"wait": "false"}, json={"ids": ["w1"]})
    assert gone.status_code == 202 and gone.json()["applied"] is False and gone.json()["deleted"] == 1
    waited = service.client.get("/index/applied", params={"offset": gone.json()["log_offset"], "wait": "30"})
    assert waited.json()["applied"] is True and "w1" not in ids_found(service, DOC["text"])


def test_a_write_may_wait_longer_than_the_default(service: RunningService) -> None:
    response = service.client.post("/index", params={"wait": "120"}, json={"documents": [{**DOC, "id": "w2"}]})
    assert response.status_code == 200 and response.json()["applied"] is True
    assert "w2" in ids_found(service, DOC["text"])


def test_an_offset_not_reached_is_said_after_the_wait(service: RunningService) -> None:
    future = "99999999999999-0"
    response = service.client.get("/index/applied", params={"offset": future, "wait": "0.2"})
    assert response.status_code == 200 and response.json()["applied"] is False
    assert response.json()["applied_offset"] != future


@pytest.mark.parametrize("wait", ["maybe", "-1", "4000", "1e3", " 5", "True", "0", "0.5", "007"])
def test_bad_waits_and_offsets_are_422(service: RunningService, wait: str) -> None:
    response = service.client.post("/index", params={"wait": wait}, json={"documents": [{**DOC, "id": "w3"}]})
    assert response.status_code == 422 and "true, false, or seconds" in response.text, response.text
    assert service.client.get("/index/w3").status_code == 404  # refused before anything was stored
    assert service.client.get("/index/applied", params={"offset": "not-an-offset"}).status_code == 422
