"""Bitext accuracy by hand, misaligned files, and report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tests.synthetic import make_groups, smooth_fake_encoder, write_lareqa
from xling.models.data.bitext import bitext_groups, is_bitext, load_bitext
from xling.models.data.parallel import ParallelGroup, check_strategy, summarize
from xling.models.data.text import DataError
from xling.models.evaluation.bitext import accuracy_at_1, bitext_metrics
from xling.models.evaluation.evaluate import eval_set, evaluate
from xling.models.evaluation.reports import heatmap_size, write_evaluation_report

VECTORS = {
    # afr lines and their eng translations; "een" is closer to "two" than to "one": a miss afr->eng
    "een": [1.0, 0.0, 0.2],
    "twee": [0.0, 1.0, 0.0],
    "drie": [0.0, 0.0, 1.0],
    "one": [0.6, 0.8, 0.0],
    "two": [0.0, 1.0, 0.1],
    "three": [0.1, 0.0, 1.0],
}


def make_parallel_groups() -> list[ParallelGroup]:
    queries = [{"en": f"question {i}", "de": f"frage {i}"} for i in range(3)]
    passages = [{"en": f"answer {i}", "de": f"antwort {i}"} for i in range(3)]
    return [ParallelGroup(f"q{i}", queries[i], passages[i]) for i in range(3)]


def table_encoder(texts: list[str], kind: str, langs: object = None) -> np.ndarray:
    vectors = np.array([VECTORS[t] for t in texts], dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def bitext_dir(tmp_path: Path) -> Path:
    (tmp_path / "tatoeba.afr-eng.afr").write_text("een\ntwee\ndrie\n")
    (tmp_path / "tatoeba.afr-eng.eng").write_text("one\ntwo\nthree\n")
    return tmp_path


def test_accuracy_by_hand(bitext_dir: Path) -> None:
    result = bitext_metrics(load_bitext(bitext_dir), table_encoder, min_lines=100)
    (row,) = result["pairs"]
    unit = table_encoder(list(VECTORS), "query")
    sims = unit[:3] @ unit[3:].T  # afr rows x eng columns
    assert sims[0, 0] > sims[0, 2] and sims[0, 0] > sims[0, 1]  # een finds one
    assert sims[1].argmax() == 1 and sims[2].argmax() == 2
    assert row["afr->eng"] == pytest.approx(1.0)
    # eng->afr: "one" = (.6, .8, 0) is closer to twee (0, 1, 0) = .8 than to een (.98, 0, .196) = .588: a miss
    assert row["eng->afr"] == pytest.approx(2 / 3)
    assert row["mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert row["flagged"] is True and row["lines"] == 3
    # the margin: own translation's cosine minus the best other line's, per row, averaged per direction
    forward = [sims[i, i] - np.delete(sims[i], i).max() for i in range(3)]
    backward = [sims[i, i] - np.delete(sims[:, i], i).max() for i in range(3)]
    assert forward[0] > 0 > backward[0]  # "one" loses to twee: a negative margin
    assert row["margin"] == pytest.approx((np.mean(forward) + np.mean(backward)) / 2, abs=1e-6)
    assert result["bitext_margin"] == pytest.approx(row["margin"])
    assert result["bitext_acc@1"] == pytest.approx(row["mean"])


def test_ties_count_as_misses() -> None:
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert accuracy_at_1(same, same) == 0.0


def test_misaligned_and_incomplete_folders(tmp_path: Path) -> None:
    (tmp_path / "t.deu-eng.deu").write_text("a\nb\n")
    (tmp_path / "t.deu-eng.eng").write_text("a\n")
    with pytest.raises(
        DataError, match=r"t\.deu-eng is misaligned: t\.deu-eng\.deu has 2 lines, t\.deu-eng\.eng has 1"
    ):
        load_bitext(tmp_path)
    (tmp_path / "t.deu-eng.eng").unlink()
    with pytest.raises(DataError, match=r"needs both \.deu and \.eng files"):
        load_bitext(tmp_path)
    (tmp_path / "t.deu-eng.deu").unlink()
    with pytest.raises(DataError, match="no <prefix>"):
        load_bitext(tmp_path)


def test_report_files(tmp_path: Path, bitext_dir: Path) -> None:
    lareqa = write_lareqa(tmp_path / "toyset", make_groups(12, seed=2, langs=["en", "de", "fr"]))

    def encoder(texts: list[str], kind: str, langs: object = None) -> np.ndarray:
        return table_encoder(texts, kind) if texts and texts[0] in VECTORS else smooth_fake_encoder(texts, kind)

    sets = [eval_set(lareqa), eval_set(bitext_dir, name="afr")]
    assert [s.kind for s in sets] == ["lareqa", "bitext"]
    report = evaluate(encoder, "fake-v1", sets)  # type: ignore[arg-type]
    paths = write_evaluation_report(report, tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["model_version"] == "fake-v1"
    (entry,) = data["lareqa"]
    assert entry["primary_metric"] == "multi_map" and set(entry["pair_map"]) == {"de", "en", "fr"}
    assert {"mono_map", "cross_map", "multi_map", "rank_distance", "multi_r@10"} <= set(entry["metrics"])
    assert entry["timing"]["encode_seconds"] >= 0
    assert data["bitext"][0]["name"] == "afr" and data["bitext"][0]["pairs"][0]["pair"] == "tatoeba.afr-eng"
    markdown = paths["markdown"].read_text()
    assert "| toyset |" in markdown and "| de | 12 |" in markdown and "tatoeba.afr-eng ⚑ few lines" in markdown
    image = imread(paths["heatmap:toyset"])
    width, height = heatmap_size(3)
    assert image.shape[:2] == (height, width)
    assert heatmap_size(11) != heatmap_size(3)
    assert report.primary() == entry["metrics"]["multi_map"]
    assert report.score() == ("multi_map", entry["metrics"]["multi_map"])
    assert report.score("afr") == ("bitext_acc@1", pytest.approx((1 + 2 / 3) / 2))
    with pytest.raises(ValueError, match="no evaluation set named"):
        report.score("nope")


def test_jsonl_bitext_groups_by_language_pair_and_names_bad_lines(tmp_path: Path) -> None:
    rows = [
        {"src": "een", "tgt": "one", "src_lang": "af", "tgt_lang": "en"},
        {"src": "zwei", "tgt": "two", "src_lang": "de", "tgt_lang": "en"},
        {"src": "twee", "tgt": "two", "src_lang": "af", "tgt_lang": "en"},
    ]
    file = tmp_path / "mine.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert is_bitext(file) and is_bitext(tmp_path)
    pairs = load_bitext(file)
    assert [(p.name, p.src_lines, p.tgt_lines) for p in pairs] == [
        ("mine.af-en", ["een", "twee"], ["one", "two"]),
        ("mine.de-en", ["zwei"], ["two"]),
    ]
    assert [p.name for p in load_bitext(file, langs=["de"])] == ["mine.de-en"]
    for bad, message in [
        ({"src": "a", "tgt": "b", "src_lang": "en", "tgt_lang": "en"}, "both 'en'"),
        ({"src": "a", "tgt": "", "src_lang": "en", "tgt_lang": "de"}, "'tgt' must be a non-empty string"),
        ({"src": "a", "tgt": "b", "src_lang": "English", "tgt_lang": "de"}, "bad language code"),
    ]:
        file.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=f"mine.jsonl:2: .*{message}"):
            load_bitext(file)
    file.write_bytes(json.dumps(rows[0]).encode() + b"\n" + '{"src": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match="mine.jsonl:2: not UTF-8"):
        load_bitext(file)


def test_bitext_training_groups_are_cross_lingual_only(bitext_dir: Path) -> None:
    groups = bitext_groups(load_bitext(bitext_dir))
    assert len(groups) == 3 and all(g.mono_langs() == [] for g in groups)
    assert groups[0].cross_pairs() == [("afr", "eng"), ("eng", "afr")]
    assert groups[0].queries == {"afr": "een", "eng": "one"}
    check_strategy(groups, "crosslingual")
    for strategy, alpha in [("monolingual", 0.5), ("hybrid", 1.0)]:
        with pytest.raises(DataError, match="cannot use bitext pairs"):
            check_strategy(groups, strategy, alpha)
    with pytest.raises(DataError, match="bitext pairs are cross-lingual only"):
        check_strategy(groups, "hybrid", 0.5)
    mixed = groups + make_parallel_groups()
    check_strategy(mixed, "hybrid", 0.5)
    summary = summarize(mixed)
    assert {"afr", "eng"} <= set(summary.languages)
