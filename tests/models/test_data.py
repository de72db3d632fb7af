"""Loading parallel QA data, and each data error's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.synthetic import make_groups, write_jsonl, write_lareqa
from xling.models.data.parallel import check_strategy, fingerprint, load_parallel, split
from xling.models.data.text import DataError


def test_lareqa_folder_and_jsonl_give_the_same_groups(tmp_path: Path) -> None:
    groups = make_groups(12, seed=1, missing_rate=0.3)
    from_jsonl, summary_jsonl = load_parallel(write_jsonl(tmp_path / "g.jsonl", groups))
    from_lareqa, summary_lareqa = load_parallel(write_lareqa(tmp_path / "lareqa", groups, filler_sentences=2))
    as_dicts = lambda gs: sorted((g.id, g.queries, g.passages) for g in gs)  # noqa: E731
    assert as_dicts(from_jsonl) == as_dicts(from_lareqa)
    assert summary_jsonl.to_dict() == summary_lareqa.to_dict()
    assert fingerprint(from_jsonl) == fingerprint(from_lareqa)


def test_summary_counts(tmp_path: Path) -> None:
    groups = [
        {"id": "a", "query": {"en": "q", "de": "q"}, "passage": {"en": "p", "de": "p"}},
        {"id": "b", "query": {"en": "q"}, "passage": {"en": "p", "fr": "p"}},
    ]
    _, summary = load_parallel(write_jsonl(tmp_path / "g.jsonl", groups))
    assert summary.groups == 2 and summary.languages == ["de", "en"]
    assert summary.groups_per_language == {"de": 1, "en": 2}
    assert summary.cross_pairs == {"de->en": 1, "en->de": 1, "en->fr": 1}


def test_passage_with_context(tmp_path: Path) -> None:
    folder = write_lareqa(tmp_path / "l", make_groups(2, seed=0), filler_sentences=1)
    plain, _ = load_parallel(folder)
    with_context, _ = load_parallel(folder, with_context=True)
    assert with_context[0].passages["en"].startswith(plain[0].passages["en"] + " ")
    assert len(with_context[0].passages["en"]) > len(plain[0].passages["en"])


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no <lang>\.json files"):
        load_parallel(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        load_parallel(tmp_path / "missing")


def test_file_not_in_the_format(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "en.json").write_text("{not json")
    with pytest.raises(DataError, match=r"en\.json: not JSON"):
        load_parallel(folder)
    (folder / "en.json").write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": []}]}]}))
    with pytest.raises(DataError, match=r"en\.json: data\[0\]\.paragraphs\[0\]: needs a 'sentence_breaks' list"):
        load_parallel(folder)
    (folder / "en.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match="SQuAD layout"):
        load_parallel(folder)


def test_bad_jsonl_lines_name_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "g.jsonl"
    good = json.dumps({"id": "a", "query": {"en": "q"}, "passage": {"en": "p"}})
    cases = {
        "not json": "not JSON",
        json.dumps({"id": "b", "query": {"en": "q"}}): "missing 'passage'",
        json.dumps({"id": "b", "query": {"EN!": "q"}, "passage": {"en": "p"}}): "bad language code",
        json.dumps({"id": "b", "query": {"en": ""}, "passage": {"en": "p"}}): "'query.en' is empty",
        good: "appears twice",
    }
    for line, message in cases.items():
        file.write_text(good + "\n" + line + "\n")
        with pytest.raises(DataError, match=rf"g\.jsonl:2: .*{message}"):
            load_parallel(file)


def test_group_without_a_passage_for_its_query_language(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "g.jsonl", [{"id": "x", "query": {"de": "q", "en": "q"}, "passage": {"en": "p"}}])
    with pytest.raises(DataError, match=r"g\.jsonl:1: group 'x' has a query in \['de'\] but no passage"):
        load_parallel(file)


def test_strategy_the_data_cannot_serve(tmp_path: Path) -> None:
    groups, _ = load_parallel(write_jsonl(tmp_path / "g.jsonl", make_groups(5, seed=0, langs=["en"])))
    with pytest.raises(
        DataError, match=r"'crosslingual' needs groups in at least two languages; the data has \['en'\]"
    ):
        check_strategy(groups, "crosslingual")
    with pytest.raises(DataError, match="at least two languages"):
        check_strategy(groups, "hybrid", alpha=0.5)
    check_strategy(groups, "monolingual")
    check_strategy(groups, "hybrid", alpha=1.0)  # all-monolingual hybrid needs one language only


def test_split_by_group_and_empty_sides(tmp_path: Path) -> None:
    groups, _ = load_parallel(write_jsonl(tmp_path / "g.jsonl", make_groups(20, seed=0)))
    train, val = split(groups, 0.25, seed=0)
    assert len(train) == 15 and len(val) == 5 and not {g.id for g in train} & {g.id for g in val}
    assert split(groups, 0.25, seed=0) == (train, val)
    with pytest.raises(DataError, match="leaves no validation groups"):
        split(groups[:1], 0.2, seed=0)
    with pytest.raises(DataError, match="leaves no training groups"):
        split(groups[:1], 0.9, seed=0)


def test_split_gives_each_dataset_its_own_validation_share(tmp_path: Path) -> None:
    many, _ = load_parallel(write_jsonl(tmp_path / "qa.jsonl", make_groups(200, seed=0)))
    few, _ = load_parallel(write_jsonl(tmp_path / "rare.jsonl", make_groups(12, seed=5)))
    for group in few:
        group.id, group.source = f"rare-{group.id}", "rare"
    for group in many:
        group.source = "qa"
    train, val = split(many + few, 0.05, seed=0)
    # 5% of each: 10 of 200 QA groups, and 1 of the 12 rare ones (round(0.6) = 1; at least one anyway)
    assert sum(g.source == "qa" for g in val) == 10 and sum(g.source == "rare" for g in val) == 1
    assert len(train) + len(val) == 212 and not {g.id for g in train} & {g.id for g in val}
    tiny = [few[0]]
    _, val = split(many + tiny, 0.05, seed=0)
    assert sum(g.source == "rare" for g in val) == 0  # one group only: it trains
