"""Per-language centring: means as numpy computes them, each vector centred with its own language's mean."""

from __future__ import annotations

import numpy as np
import pytest

from tests.synthetic import make_groups, smooth_fake_encoder, write_lareqa
from xling.models.centering import Centering, calibrate, center, language_means
from xling.models.data.bitext import BitextPair
from xling.models.data.lareqa import load_lareqa
from xling.models.evaluation.bitext import accuracy_at_1, bitext_metrics
from xling.models.evaluation.evaluate import evaluate_lareqa


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_means_equal_numpys_and_a_language_below_the_count_has_none() -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((9, 5)))
    langs = ["en", "de", "en", "fr", "de", "en", "de", "en", "de"]
    means = language_means(vectors, langs, min_count=2)
    assert set(means) == {"en", "de"}  # one French row is below the count
    for lang in means:
        expected = vectors[[i for i, code in enumerate(langs) if code == lang]].mean(axis=0)
        np.testing.assert_allclose(means[lang], expected, rtol=1e-6, atol=1e-7)


def test_each_row_is_centred_on_its_own_language_and_normalised_again() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((4, 6)))
    means = {"en": unit(rng.standard_normal((1, 6)))[0] * 0.3, "de": unit(rng.standard_normal((1, 6)))[0] * 0.3}
    fallback = np.full(6, 0.1, dtype=np.float32)
    langs = ["en", "de", "sw", "en"]
    centred = center(vectors, langs, means, fallback)
    offsets = [means["en"], means["de"], fallback, means["en"]]
    for row, offset in enumerate(offsets):
        expected = (vectors[row] - offset) / np.linalg.norm(vectors[row] - offset)
        np.testing.assert_allclose(centred[row], expected, rtol=1e-5, atol=1e-6)
    untouched = center(vectors[:1], ["xx"], {})  # no mean and no fallback: as it was
    np.testing.assert_allclose(untouched, vectors[:1], rtol=1e-6)


def test_centring_removes_a_per_language_offset_that_bias_put_there(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Vectors of a fake encoder plus a strong offset per language: the offset ruins multilingual retrieval
    (every query's own language wins), and centring on the candidate pool takes it away again."""
    folder = write_lareqa(tmp_path / "set", make_groups(24, seed=3))
    data = load_lareqa(folder)
    offsets = {lang: 2.0 * unit(np.random.default_rng(i).standard_normal((1, 16)))[0]
               for i, lang in enumerate(data.languages)}  # fmt: skip

    def biased(texts: list[str], kind: str, langs: object = None) -> np.ndarray:
        lang_of = {t: data.languages[i] for t, i in zip(data.candidate_texts, data.candidate_langs, strict=True)}
        lang_of.update({t: data.languages[i] for t, i in zip(data.question_texts, data.question_langs, strict=True)})
        clean = smooth_fake_encoder(texts, kind)
        return unit(clean + np.stack([offsets[lang_of[t]] for t in texts]))

    evaluation = evaluate_lareqa(biased, data, "biased", centering=True)
    assert evaluation.centred is not None
    raw, centred = evaluation.result.metrics, evaluation.centred.metrics
    assert centred["multi_map"] > raw["multi_map"] + 0.1, (raw, centred)
    assert centred["rank_distance"] < raw["rank_distance"], (raw, centred)
    assert evaluate_lareqa(biased, data, "plain").centred is None
    assert "centred" in evaluation.to_dict()


@pytest.mark.parametrize("min_count", [0, 1])
def test_every_language_present_has_a_mean_at_the_lowest_counts(min_count: int) -> None:
    vectors = unit(np.eye(3, dtype=np.float32))
    assert set(language_means(vectors, ["a", "b", "a"], min_count)) == {"a", "b"}


def test_calibrate_means_fallback_query_mean_and_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sample = [(f"d{i}", lang, f"{lang}{i:02d}w {lang}{i + 1:02d}w") for lang in ("en", "de") for i in range(6)]
    sample.append(("s0", "sw", "sw01w"))  # one Swahili document: below min_count, no mean
    centering = calibrate(smooth_fake_encoder, sample, model_version="v1", min_count=2, now=5.0)  # type: ignore[arg-type]
    assert centering.languages == ["de", "en"] and centering.counts == {"de": 6, "en": 6}
    for lang in ("en", "de"):
        texts = [text for _, code, text in sample if code == lang]
        np.testing.assert_allclose(centering.means[lang], smooth_fake_encoder(texts, "passage").mean(axis=0),
                                   rtol=1e-6, atol=1e-7)
        queries = smooth_fake_encoder(texts, "query").mean(axis=0)
        assert centering.query_mean.shape == queries.shape
    np.testing.assert_allclose(centering.fallback, (centering.means["en"] + centering.means["de"]) / 2, atol=1e-7)
    centred = centering.documents(np.ones((1, 16), dtype=np.float32), ["sw"])  # no mean: the fallback
    np.testing.assert_allclose(centred, center(np.ones((1, 16), dtype=np.float32), ["x"], {"x": centering.fallback}))

    centering.save(tmp_path)
    loaded = Centering.load(tmp_path)
    assert loaded is not None and loaded.id == centering.id and loaded.counts == centering.counts
    np.testing.assert_array_equal(loaded.means["en"], centering.means["en"])
    other = calibrate(smooth_fake_encoder, sample[1:], model_version="v1", min_count=2)  # type: ignore[arg-type]
    assert other.id != centering.id and other.corpus_fingerprint != centering.corpus_fingerprint
    tampered = centering.to_dict()
    tampered["means"]["en"][0] += 0.5
    with pytest.raises(ValueError, match="hash to"):
        Centering.from_dict(tampered)
    with pytest.raises(ValueError, match="no language has 7"):
        calibrate(smooth_fake_encoder, sample, model_version="v1", min_count=7)  # type: ignore[arg-type]


def test_bitext_centring_uses_each_sides_own_passage_mean() -> None:
    """A bitext pair scored centred: each side's vectors minus the mean of that side's passage vectors."""
    src = [f"de{i:02d}w de{i + 1:02d}w" for i in range(0, 20, 2)]
    tgt = [f"en{i:02d}w en{i + 1:02d}w" for i in range(0, 20, 2)]
    pair = BitextPair("t.de-en", "de", "en", src, tgt)
    scored = bitext_metrics([pair], smooth_fake_encoder, min_lines=0, centering=True)  # type: ignore[arg-type]
    encode = smooth_fake_encoder
    src_mean, tgt_mean = encode(src, "passage").mean(axis=0), encode(tgt, "passage").mean(axis=0)
    forward = accuracy_at_1(center(encode(src, "query"), ["x"] * 10, {"x": src_mean}),
                            center(encode(tgt, "passage"), ["x"] * 10, {"x": tgt_mean}))
    backward = accuracy_at_1(center(encode(tgt, "query"), ["x"] * 10, {"x": tgt_mean}),
                             center(encode(src, "passage"), ["x"] * 10, {"x": src_mean}))
    row = scored["centred"]["pairs"][0]
    assert (row["de->en"], row["en->de"]) == (pytest.approx(forward), pytest.approx(backward))
    assert scored["centred"]["bitext_acc@1"] == pytest.approx((forward + backward) / 2)
    assert "centred" not in bitext_metrics([pair], smooth_fake_encoder)  # type: ignore[arg-type]
