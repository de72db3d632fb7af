"""LAReQA metrics against hand-computed values and a brute-force reference implementation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import make_groups, smooth_fake_encoder, write_lareqa
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.evaluation.evaluate import evaluate_lareqa
from xling.models.evaluation.lareqa import lareqa_metrics, multi_average_precision


def test_ap_one_relevant_at_rank_3() -> None:
    assert multi_average_precision(np.array([3])) == pytest.approx(1 / 3)


def test_ap_several_relevant() -> None:
    # relevant at ranks 1, 3, 6: P@1 = 1, P@3 = 2/3, P@6 = 3/6
    assert multi_average_precision(np.array([6, 1, 3])) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)


def _write(folder: Path, lang: str, paragraphs: list[tuple[list[str], list[tuple[str, int]]]]) -> None:
    """paragraphs: (sentences, [(question id, index of its answer sentence)])."""
    out = []
    for sentences, questions in paragraphs:
        context, breaks = "", []
        for sentence in sentences:
            start = len(context) + (1 if context else 0)
            context = f"{context} {sentence}" if context else sentence
            breaks.append([start, start + len(sentence)])
        qas = [
            {"id": qid, "question": f"{qid} in {lang}?", "answers": [{"text": "x", "answer_start": breaks[i][0]}]}
            for qid, i in questions
        ]
        out.append({"context": context, "sentence_breaks": breaks, "qas": qas})
    (folder / f"{lang}.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": out}]}))


@pytest.fixture
def toy(tmp_path: Path) -> LareqaData:
    """en and de answer q1 and q2; fr answers only q1 (beside a filler sentence)."""
    _write(tmp_path, "en", [(["a_en", "b_en"], [("q1", 0), ("q2", 1)])])
    _write(tmp_path, "de", [(["a_de", "b_de"], [("q1", 0), ("q2", 1)])])
    _write(tmp_path, "fr", [(["a_fr", "f_fr"], [("q1", 0)])])
    return load_lareqa(tmp_path)


# Scores each question gives each candidate (by text); unlisted candidates score 0.
TOY_SCORES = {
    ("q1", "en"): {"a_en": 0.9, "b_en": 0.1, "a_de": 0.2, "b_de": 0.8, "a_fr": 0.7, "f_fr": 0.3},
    ("q2", "en"): {"b_en": 1.0, "b_de": 0.95},
    ("q1", "de"): {"a_en": 0.9, "a_de": 0.4, "b_de": 0.4, "a_fr": 0.1, "f_fr": 0.2},  # a tie in de
    ("q2", "de"): {"b_de": 1.0, "b_en": 0.9},
    ("q1", "fr"): {"f_fr": 0.6, "a_en": 0.5, "a_fr": 0.3, "b_de": 0.2, "a_de": 0.1},
}


def toy_vectors(data: LareqaData) -> tuple[np.ndarray, np.ndarray]:
    """Candidates as one-hot rows, queries as their score rows: scores = queries @ candidates.T exactly."""
    candidates = np.eye(len(data.candidate_texts), dtype=np.float32)
    queries = np.zeros((len(data.question_texts), len(data.candidate_texts)), dtype=np.float32)
    for qi, (qid, li) in enumerate(zip(data.question_ids, data.question_langs, strict=True)):
        row = TOY_SCORES[(qid, data.languages[li])]
        for ci, text in enumerate(data.candidate_texts):
            queries[qi, ci] = row.get(text, 0.0)
    return queries, candidates


def test_toy_set_by_hand(toy: LareqaData) -> None:
    assert toy.languages == ["de", "en", "fr"] and len(toy.candidate_texts) == 6 and len(toy.question_texts) == 5
    result = lareqa_metrics(toy, *toy_vectors(toy))
    # Mono: en 1; de (q1: a_de ties b_de, pessimistic rank 2 -> .5; q2: 1) .75; fr .5
    assert result.pair_map["en"]["en"] == pytest.approx(1.0)
    assert result.pair_map["de"]["de"] == pytest.approx(0.75)
    assert result.pair_map["fr"]["fr"] == pytest.approx(0.5)
    assert result.metrics["mono_map"] == pytest.approx((1 + 0.75 + 0.5) / 3)
    # Cross: en->de .75, en->fr 1 (q2 skipped: no fr answer), de->en 1, de->fr .5, fr->en 1, fr->de .5
    assert result.pair_map["en"]["fr"] == pytest.approx(1.0)
    assert result.pair_map["de"]["fr"] == pytest.approx(0.5)
    assert result.metrics["cross_map"] == pytest.approx((0.75 + 1 + 1 + 0.5 + 1 + 0.5) / 6)
    # Multi: q1 en ranks 1,3,5; q1 de ranks 1,3,5 (b_de before the tied a_de); q1 fr ranks 2,3,5; q2 ranks 1,2
    ap_135 = (1 + 2 / 3 + 3 / 5) / 3
    ap_235 = (1 / 2 + 2 / 3 + 3 / 5) / 3
    assert result.metrics["multi_map"] == pytest.approx(((ap_135 + 1) / 2 + (ap_135 + 1) / 2 + ap_235) / 3)
    # Rank distance: en (4 + 1)/2, de (4 + 1)/2, fr 3
    assert result.metrics["rank_distance"] == pytest.approx((2.5 + 2.5 + 3) / 3)
    assert result.details["cross_pairs"] == 6
    assert result.metrics["mono_r@1"] == pytest.approx((1 + 0.5 + 0) / 3)


def brute_force(data: LareqaData, queries: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
    """The definitions, one query and one ranking at a time, with an explicit pessimistic sort."""
    scores = queries @ candidates.T
    n_langs = len(data.languages)

    def ranking_ap(qi: int, pool: list[int]) -> tuple[float, list[int]] | None:
        relevant = [int(c) for c in data.relevant[qi] if c >= 0 and c in pool]
        if not relevant:
            return None
        order = {c: i for i, c in enumerate(int(c) for c in data.relevant[qi] if c >= 0)}
        ranked = sorted(pool, key=lambda c: (-scores[qi, c], c in order, order.get(c, 0)))
        ranks = sorted(ranked.index(c) + 1 for c in relevant)
        ap = sum((k + 1) / r for k, r in enumerate(ranks)) / len(ranks)
        return ap, ranks

    pair: dict[tuple[int, int], list[float]] = {}
    multi: dict[int, list[float]] = {}
    dist: dict[int, list[float]] = {}
    for qi, x in enumerate(data.question_langs.tolist()):
        for y in range(n_langs):
            got = ranking_ap(qi, [c for c in range(len(candidates)) if data.candidate_langs[c] == y])
            if got is not None and data.relevant[qi, y] >= 0:
                pair.setdefault((x, y), []).append(got[0])
        got = ranking_ap(qi, list(range(len(candidates))))
        assert got is not None
        multi.setdefault(x, []).append(got[0])
        if len(got[1]) >= 2:
            dist.setdefault(x, []).append(got[1][-1] - got[1][0])
    return {
        "mono_map": float(np.mean([np.mean(v) for (x, y), v in pair.items() if x == y])),
        "cross_map": float(np.mean([np.mean(v) for (x, y), v in pair.items() if x != y])),
        "multi_map": float(np.mean([np.mean(v) for v in multi.values()])),
        "rank_distance": float(np.mean([np.mean(v) for v in dist.values()])),
    }


def coarse_fake_encoder(texts: list[str], kind: str, langs: object = None) -> np.ndarray:
    """Deterministic and coarse (few distinct vectors), so ties are everywhere."""
    rows = []
    for text in texts:
        digest = hashlib.sha256(f"{kind}:{text}".encode()).digest()
        rows.append(np.array([digest[i] % 3 for i in range(4)], dtype=np.float32) + 0.1)
    vectors = np.stack(rows)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("encoder", [coarse_fake_encoder, smooth_fake_encoder])
def test_evaluator_equals_brute_force(tmp_path: Path, encoder: object) -> None:
    folder = write_lareqa(tmp_path / "l", make_groups(30, seed=4, missing_rate=0.3), filler_sentences=2)
    data = load_lareqa(folder)
    evaluation = evaluate_lareqa(encoder, data, "synthetic")  # type: ignore[arg-type]
    queries = encoder(data.question_texts, "query")  # type: ignore[operator]
    candidates = encoder(data.candidate_texts, "passage")  # type: ignore[operator]
    expected = brute_force(data, queries, candidates)
    for key, value in expected.items():
        assert evaluation.result.metrics[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < evaluation.result.metrics["multi_map"] < 1


def test_chunking_does_not_change_results(toy: LareqaData) -> None:
    q, c = toy_vectors(toy)
    assert lareqa_metrics(toy, q, c, chunk=1).metrics == lareqa_metrics(toy, q, c, chunk=100).metrics


def test_language_selection(tmp_path: Path) -> None:
    folder = write_lareqa(tmp_path / "l", make_groups(5, seed=0))
    data = load_lareqa(folder, ["de", "en"])
    assert data.languages == ["de", "en"] and data.relevant.shape == (10, 2)
    from xling.models.data.text import DataError

    with pytest.raises(DataError, match=r"no file for languages \['xx'\]"):
        load_lareqa(folder, ["xx"])


def test_qa_groups_evaluate_like_lareqa() -> None:
    from xling.models.data.lareqa import lareqa_from_groups
    from xling.models.data.parallel import ParallelGroup
    from xling.models.evaluation.lareqa import lareqa_metrics

    groups = [
        ParallelGroup(f"g{i}", {"en": f"q{i} en", "de": f"q{i} de"}, {"en": f"p{i} en", "de": f"p{i} de"})
        for i in range(6)
    ]
    data = lareqa_from_groups(groups)
    assert data.languages == ["de", "en"] and len(data.candidate_texts) == 12 and len(data.question_texts) == 12
    # A perfect encoder: each group is its own direction, shared by its questions and passages in every language.
    basis = np.eye(6, dtype=np.float32)
    group_of = {text: int(text[1]) for text in data.question_texts + data.candidate_texts}
    questions = basis[[group_of[t] for t in data.question_texts]]
    candidates = basis[[group_of[t] for t in data.candidate_texts]]
    metrics = lareqa_metrics(data, questions, candidates).metrics
    assert metrics["multi_map"] == pytest.approx(1.0) and metrics["mono_map"] == pytest.approx(1.0)
    with pytest.raises(Exception, match="no groups in languages"):
        lareqa_from_groups(groups, ["fr"])
