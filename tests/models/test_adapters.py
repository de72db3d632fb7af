"""Per-language adapters on a tiny real model: training moves only its language, routing by language, the version
on disk, and detection of a language learnt from its sentences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.adapted_model import ENGLISH, INVENTED
from tests.tiny_model import CORPUS
from xling.models.adapters.bundle import adapter_folder, adapter_records
from xling.models.adapters.config import AdapterConfig
from xling.models.adapters.training import adapter_loss, language_bitext, mapping_accuracy
from xling.models.data.bitext import BitextPair
from xling.models.encoder import Encoder
from xling.models.language import DETECTOR, LanguageDetector, LanguageProfile
from xling.models.resolve import ModelSource


@pytest.fixture
def base(adapter_base: ModelSource) -> ModelSource:
    return adapter_base


@pytest.fixture
def adapted(adapter_version: Path) -> Path:
    return adapter_version


def test_the_version_lists_its_adapter_and_links_the_base_weights(base: ModelSource, adapted: Path) -> None:
    records = adapter_records(adapted)
    assert list(records) == ["xqz"]
    record = records["xqz"]
    assert record["path"] == "adapters/xqz" and record["pairs"] == ["train.xqz-en"] and record["target_langs"] == ["en"]
    assert record["train_pairs"] + record["val_pairs"] == len(ENGLISH)
    assert (adapter_folder(adapted, "xqz") / "adapter_model.safetensors").is_file()
    manifest = json.loads((adapted / "xling.json").read_text())
    assert manifest["parent_version"] == "tiny-base" and manifest["training"]["kind"] == "adapters"
    weights = next(base.path.rglob("model.safetensors"))
    linked = adapted / weights.relative_to(base.path)
    assert linked.stat().st_ino == weights.stat().st_ino  # the same bytes, not a copy


def test_other_languages_get_the_base_vectors_byte_for_byte(base: ModelSource, adapted: Path) -> None:
    texts = CORPUS["en"] + CORPUS["de"] + CORPUS["fr"]
    langs = ["en"] * 6 + ["de"] * 6 + ["fr"] * 6
    plain, routed = Encoder(base.path, version="base"), Encoder(adapted, version="tiny-xqz")
    assert routed.adapters == ["xqz"]
    for kind in ("query", "passage"):
        expected = plain.encode(texts, kind)
        assert routed.encode(texts, kind, langs).tobytes() == expected.tobytes()
        assert routed.encode(texts, kind).tobytes() == expected.tobytes()  # no languages: no routing


def test_only_the_adapted_language_moves_in_a_mixed_batch(base: ModelSource, adapted: Path) -> None:
    plain, routed = Encoder(base.path, version="base"), Encoder(adapted, version="tiny-xqz")
    texts = [CORPUS["en"][0], INVENTED[0], CORPUS["de"][1], INVENTED[1]]
    langs = ["en", "xqz", "de", "xqz"]
    mixed = routed.encode(texts, "query", langs)
    assert routed.route(langs, 4) == {None: [0, 2], "xqz": [1, 3]}
    np.testing.assert_array_equal(mixed[[0, 2]], plain.encode([texts[0], texts[2]], "query"))
    alone = routed.encode([INVENTED[0], INVENTED[1]], "query", ["xqz", "xqz"])
    np.testing.assert_allclose(mixed[[1, 3]], alone, atol=1e-6)
    assert not np.allclose(mixed[[1, 3]], plain.encode([texts[1], texts[3]], "query"), atol=1e-3)


def test_the_adapter_maps_its_language_onto_the_translations(base: ModelSource, adapted: Path) -> None:
    """The adapter finds each sentence's own translation among all of them far more often than the base (a random
    tiny model: .59 against .03 when written)."""
    plain, routed = Encoder(base.path, version="base"), Encoder(adapted, version="tiny-xqz")
    targets = plain.encode(ENGLISH, "passage")
    own = np.arange(len(ENGLISH))
    before = mapping_accuracy(plain.encode(INVENTED, "query"), targets, own)
    after = mapping_accuracy(routed.encode(INVENTED, "query", ["xqz"] * len(INVENTED)), targets, own)
    assert after >= 0.4 and after > before + 0.3, (before, after)


def test_int8_refuses_a_version_with_adapters(adapted: Path) -> None:
    with pytest.raises(ValueError, match="adapters"):
        Encoder(adapted, version="tiny-xqz", precision="int8")


def test_language_bitext_gathers_one_language_from_every_pair() -> None:
    pairs = [BitextPair("a.xqz-en", "xqz", "en", ["x1", "x2"], ["e1", "e2"]),
             BitextPair("b.de-xqz", "de", "xqz", ["d1"], ["x3"]),
             BitextPair("c.de-en", "de", "en", ["d2"], ["e3"])]
    found = language_bitext(pairs, "xqz")
    assert found.sentences == ["x1", "x2", "x3"] and found.translations == ["e1", "e2", "d1"]
    assert found.target_langs == ["de", "en"] and found.pairs == ["a.xqz-en", "b.de-xqz"]
    with pytest.raises(ValueError, match="no bitext pair"):
        language_bitext(pairs, "fr")


def test_adapter_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="rank"):
        AdapterConfig(rank=0).validate()
    with pytest.raises(ValueError, match="val_fraction"):
        AdapterConfig(val_fraction=0.0).validate()


def test_detection_learns_a_language_from_its_sentences(tmp_path: Path) -> None:
    learn, held_out = INVENTED[:60], INVENTED[60:]
    profile = LanguageProfile.learn(learn)
    profile.save(tmp_path)
    loaded = LanguageProfile.load(tmp_path)
    assert loaded is not None and np.array_equal(loaded.counts, profile.counts)
    detector = LanguageDetector({"xqz": loaded})
    assert "xqz" not in DETECTOR.languages and "xqz" in detector.languages
    assert sum(detector.detect(s) == "xqz" for s in held_out) >= 0.9 * len(held_out)
    # Real sentences keep their languages: the learnt column does not swallow them.
    for lang in ("en", "de", "fr", "es"):
        assert [detector.detect(s) for s in CORPUS[lang]] == [DETECTOR.detect(s) for s in CORPUS[lang]]
    assert detector.ranked("   ") == [] and detector.ranked(held_out[0])[0] == "xqz"


def test_a_profile_from_another_feature_set_is_refused() -> None:
    profile = LanguageProfile(12, np.array([1, 2]), np.array([3.0, 4.0]))
    with pytest.raises(ValueError, match="learn it again"):
        LanguageDetector({"xqz": profile}).detect("anything")



def test_the_loss_terms_by_hand() -> None:
    """InfoNCE over all targets, its symmetric half over the batch, and the squared distance, on a tiny case."""
    import torch

    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    own = torch.tensor([0, 2])
    scale = 2.0
    forward = -np.mean([np.log(np.exp(2) / (np.exp(2) + np.exp(1.2) + 1)),
                        np.log(np.exp(2) / (1 + np.exp(1.6) + np.exp(2)))])
    backward = -np.log(np.exp(2) / (np.exp(2) + 1))  # each own target against the two rows of the batch
    assert abs(adapter_loss(emb, targets, own, scale, 0.0).item() - forward) < 1e-5
    assert abs(adapter_loss(emb, targets, own, scale, 0.0, symmetric=True).item() - (forward + backward)) < 1e-5
    moved = emb + torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    distance = 0.25 / 2  # the mean over rows of the squared distance to the own target
    with_distance = adapter_loss(moved, targets, own, scale, 3.0).item() - adapter_loss(moved, targets, own, scale, 0.0)
    assert abs(with_distance.item() - 3.0 * distance) < 1e-5
