"""Evaluation in lexical and fused retrieval modes: BM25 from the real lexical index, fusion by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xling.models.data.bitext import BitextPair
from xling.models.data.lareqa import LareqaData
from xling.models.evaluation.bitext import bitext_metrics
from xling.models.evaluation.lareqa import lareqa_metrics
from xling.models.evaluation.modes import RetrievalMode, lexical_matrix, rescorer, rrf, weighted
from xling.models.index.fusion import Fusion


def two_languages() -> LareqaData:
    """Two questions, each answered in German and English; only the question's own language shares its words."""
    return LareqaData(
        languages=["de", "en"],
        candidate_texts=["the red house", "a green tree", "das rote Haus", "ein grüner Baum"],
        candidate_langs=np.array([1, 1, 0, 0]),
        question_ids=["house", "tree"],
        question_texts=["red house", "grüner Baum"],
        question_langs=np.array([1, 0]),
        relevant=np.array([[2, 0], [3, 1]]),  # per question: its answer in de, in en
    )


def test_bm25_matrix_is_the_lexical_index_score_and_zero_across_languages() -> None:
    matrix = lexical_matrix(two_languages())
    # 'red house' in the English partition: two documents of 3 words, each term in one: idf ln 2, tf factor 1.
    assert matrix[0, 0] == pytest.approx(2 * math.log(2), rel=1e-5)
    assert np.count_nonzero(matrix) == 2 and matrix[1, 3] > 0


def test_lexical_mode_ranks_by_bm25_and_ties_what_it_cannot_see() -> None:
    data = two_languages()
    constant = np.ones((2, 4), dtype=np.float32) / 2  # dense scores all tie: dense alone finds nothing
    lexical = RetrievalMode("lexical")
    result = lareqa_metrics(data, constant[:, :1], constant[:1].T, rescore=rescorer(lexical, lexical_matrix(data)))
    assert result.metrics["mono_map"] == pytest.approx(1.0)
    # Across languages BM25 is 0 for both candidates: the pessimistic tie puts the answer second.
    assert result.metrics["cross_map"] == pytest.approx(0.5)
    dense = lareqa_metrics(data, constant[:, :1], constant[:1].T)
    assert dense.metrics["mono_map"] == pytest.approx(0.5)


def test_weighted_fusion_adds_normalised_bm25_and_weight_zero_is_dense() -> None:
    rng = np.random.default_rng(0)
    cosines, bm25 = rng.normal(size=(3, 5)), np.array([[0, 2, 4, 0, 1], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0.0]])
    fused = weighted(cosines, bm25, 0.1)
    assert fused[0] == pytest.approx(cosines[0] + 0.1 * bm25[0] / 4)
    assert fused[1] == pytest.approx(cosines[1])  # no term matched: the cosine alone
    assert weighted(cosines, bm25, 0.0) == pytest.approx(cosines)


def test_per_language_normalisation_gives_each_languages_best_the_full_weight() -> None:
    cosines = np.zeros((1, 4))
    bm25 = np.array([[8.0, 4.0, 2.0, 0.0]])  # columns 0-1 one language, 2-3 another
    groups = [np.array([0, 1]), np.array([2, 3])]
    assert weighted(cosines, bm25, 0.1, groups)[0] == pytest.approx([0.1, 0.05, 0.1, 0.0])
    assert weighted(cosines, bm25, 0.1)[0] == pytest.approx([0.1, 0.05, 0.025, 0.0])  # one best for all
    mode = RetrievalMode("hybrid", Fusion("weighted", weight=0.1, normalise="language"))
    assert mode.label == "hybrid weighted 0.1, per language"
    with pytest.raises(ValueError, match="languages"):
        rescorer(mode, bm25)


def test_rrf_by_hand() -> None:
    cosines = np.array([[0.9, 0.5, 0.7, 0.1]])
    bm25 = np.array([[0.0, 3.0, 1.0, 0.0]])
    # dense ranks 1, 3, 2, 4; lexical ranks (matched only) -, 1, 2, -; window 3 drops dense rank 4
    expected = [1 / 61, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62, 0.0]
    assert rrf(cosines, bm25, 60, 3)[0] == pytest.approx(expected)
    assert RetrievalMode("hybrid", Fusion("rrf", window=3)).label == "hybrid rrf k60 window 3"


def test_bitext_in_lexical_mode_matches_shared_names() -> None:
    pair = BitextPair("names.deu-eng", "deu", "eng", ["Anna singt", "Tom liest", "Maria tanzt"],
                      ["Anna sings", "Tom reads", "Maria dances"])

    def constant(texts: list[str], kind: str, langs: object = None) -> np.ndarray:
        return np.ones((len(texts), 2), dtype=np.float32) / math.sqrt(2)

    assert bitext_metrics([pair], constant, min_lines=1)["bitext_acc@1"] == 0.0  # every score ties: all misses
    lexical = bitext_metrics([pair], constant, min_lines=1, mode=RetrievalMode("lexical"))
    assert lexical["bitext_acc@1"] == 1.0 and lexical["retrieval"] == "lexical"
