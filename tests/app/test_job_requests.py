"""Job requests are checked before anything is queued, against what each dataset's upload recorded."""

from __future__ import annotations

import json

from tests.conftest import RunningService
from tests.synthetic import make_groups


def upload(service: RunningService, name: str, groups: list[dict]) -> None:
    body = "".join(json.dumps(g) + "\n" for g in groups).encode()
    response = service.client.post("/datasets", data={"name": name}, files={"file": (f"{name}.jsonl", body)})
    assert response.status_code == 201, response.text


def test_a_job_is_checked_against_the_upload_record_without_reading_the_data_again(service: RunningService) -> None:
    upload(service, "multi", make_groups(12, seed=1))
    upload(service, "english", make_groups(6, seed=2, langs=["en"]))
    for stored in (service.settings.datasets_dir / "multi").glob("*.jsonl"):
        stored.write_text("no longer JSON: a submission that parsed the data would refuse this\n")
    accepted = service.client.post("/jobs/finetune", json={"dataset": "multi", "max_steps": 1, "version": "v-ok"})
    assert accepted.status_code == 202, accepted.text
    assert service.client.get(f"/jobs/{accepted.json()['job_id']}").json()["params"]["dataset"] == ["multi"]
    refused = service.client.post("/jobs/finetune", json={"dataset": "english", "strategy": "crosslingual"})
    assert refused.status_code == 422 and "at least two languages" in refused.json()["detail"], refused.text
    unknown = service.client.post("/jobs/evaluate", json={"datasets": ["multi", "nowhere"]})
    assert unknown.status_code == 422 and "no dataset 'nowhere'" in unknown.json()["detail"], unknown.text
