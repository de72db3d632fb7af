"""Uploads that hostile clients and new users send: bad encodings, malformed SQuAD fields, zip bombs.

Every refusal answers the one error shape and leaves nothing stored."""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.app.helpers import assert_error_shape, stored, upload, zipped
from tests.conftest import RunningService

LATIN1 = "Grüße aus Köln".encode("latin-1")


GROUP = {"id": "g1", "query": {"en": "where?", "de": "wo?"}, "passage": {"en": "here.", "de": "hier."}}


def squad(question: str, answer_start: Any) -> dict[str, Any]:
    context = "Der Dom steht in Köln. Er ist alt."
    qa = {"id": "q1", "question": question, "answers": [{"text": "Köln", "answer_start": answer_start}]}
    return {"data": [{"paragraphs": [{"context": context, "sentence_breaks": [[0, 22], [23, 34]], "qas": [qa]}]}]}


def first_bad_byte(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    raise AssertionError("the payload is valid UTF-8")


JSONL_QA = json.dumps(GROUP).encode() + b"\n" + LATIN1 + b"\n"


SQUAD_LATIN1 = json.dumps(squad("Wo?", 17), ensure_ascii=False).encode("latin-1")


JSONL_BITEXT = b'{"src": "a", "tgt": "b", "src_lang": "en", "tgt_lang": "de"}\n{"src": "' + LATIN1 + b'"}\n'


# (case, upload name, upload bytes, where the error must point, the file's bytes that hold the bad one)
NOT_UTF8_UPLOADS = [
    ("latin-1 jsonl", "mine.jsonl", JSONL_QA, "mine.jsonl:2", JSONL_QA),
    ("latin-1 json in a zip", "d.zip", zipped({"set/de.json": SQUAD_LATIN1}), "de.json", SQUAD_LATIN1),
    ("latin-1 bitext jsonl", "b.jsonl", JSONL_BITEXT, ".jsonl:2", JSONL_BITEXT),
]


@pytest.mark.parametrize(
    ("case", "filename", "payload", "where", "file_bytes"), NOT_UTF8_UPLOADS, ids=[c[0] for c in NOT_UTF8_UPLOADS]
)
def test_non_utf8_uploads_are_422_naming_file_and_offset(
    hardened: RunningService, case: str, filename: str, payload: bytes, where: str, file_bytes: bytes
) -> None:
    before = stored(hardened)
    body = assert_error_shape(upload(hardened, "enc", filename, payload), 422)
    assert "not UTF-8" in body["detail"] and where in body["detail"], body
    assert f"at byte {first_bad_byte(file_bytes)} of the file" in body["detail"], body
    assert stored(hardened) == before


def test_the_byte_offset_is_exact() -> None:

    from xling.models.data.text import DataError, utf8_lines

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.jsonl"
        path.write_bytes(b"ok\n" + b"ab" + b"\xe9" + b"\n")
        with pytest.raises(DataError, match=r"x.jsonl:2: not UTF-8 at byte 5 "):
            list(utf8_lines(path))


@pytest.mark.parametrize("answer_start", ["seventeen", None, [17], {"at": 17}])
def test_answer_start_that_is_not_a_number_is_422(hardened: RunningService, answer_start: Any) -> None:
    payload = zipped({"set/de.json": json.dumps(squad("Wo?", answer_start)).encode()})
    body = assert_error_shape(upload(hardened, "badstart", "d.zip", payload), 422)
    assert "answer_start" in body["detail"] and "de.json" in body["detail"]


def test_a_quoted_answer_start_still_loads(hardened: RunningService) -> None:
    payload = zipped(
        {"q/de.json": json.dumps(squad("Wo?", "17")).encode(), "q/en.json": json.dumps(squad("Where?", 17)).encode()}
    )
    response = upload(hardened, "quoted", "d.zip", payload)
    assert response.status_code == 201, response.text
    assert response.json()["summary"]["groups"] == 1


def test_zip_bomb_is_refused_while_streaming(hardened: RunningService) -> None:
    before = stored(hardened)
    bomb = zipped({"bomb/en.json": b"\0" * (64 * 1024 * 1024)})  # 64 MiB of zeros, ~64 KB zipped
    assert len(bomb) < 200_000
    body = assert_error_shape(upload(hardened, "bomb", "b.zip", bomb), 413)
    assert "limit" in body["detail"] or "times its compressed size" in body["detail"]
    assert stored(hardened) == before


def test_ratio_bound_catches_a_member_under_the_total_limit(hardened: RunningService) -> None:
    bomb = zipped({"bomb/en.json": b"\0" * (4 * 1024 * 1024)})  # under the 8 MiB total, ratio ~1000
    body = assert_error_shape(upload(hardened, "bomb2", "b.zip", bomb), 413)
    assert "times its compressed size" in body["detail"]


def test_total_unpacked_bound_holds_for_incompressible_members(hardened: RunningService) -> None:

    members = {f"big/part{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(3)}  # 9 MiB > 8 MiB, ratio ~1
    body = assert_error_shape(upload(hardened, "big", "b.zip", zipped(members, zipfile.ZIP_STORED)), 413)
    assert "8388608" in body["detail"]


def test_lying_zip_headers_do_not_unpack_past_the_limit(tmp_path: Path) -> None:
    """A member whose header claims 10 bytes but which inflates to megabytes is refused, and little is written."""
    from xling.models.data.text import DataError
    from xling.state.datasets import UnpackLimits, _extract_zip

    payload = bytearray(zipped({"x/en.json": b"\0" * (3 * 1024 * 1024)}))
    # Patch the central directory's uncompressed size (offset 24 in its header) to claim 10 bytes.
    central = bytes(payload).rindex(b"PK\x01\x02")
    payload[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(DataError, match="cannot be unpacked|limit|compressed size"):
        _extract_zip(io.BytesIO(bytes(payload)), tmp_path, UnpackLimits(max_bytes=1024 * 1024, max_ratio=1000))
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert written <= 1024 * 1024
