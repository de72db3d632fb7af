"""Fine-tuning on synthetic parallel data with a tiny real transformer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import make_groups, vocabulary_texts, write_jsonl, write_lareqa
from tests.tiny_model import build_tiny_model
from xling.models.data.text import DataError
from xling.models.encoder import Encoder
from xling.models.training.config import TrainConfig
from xling.models.training.trainer import Progress, finetune

GROUPS = make_groups(200, seed=0)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("train") / "tiny-synth", extra_texts=vocabulary_texts())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "groups.jsonl", GROUPS)


def fast(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "batch_size": 16,
        "max_steps": 120,
        "learning_rate": 5e-3,
        "max_length": 32,
        "val_fraction": 0.0,
        "warmup_ratio": 0.0,
        "checkpoint_steps": 1000,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def cross_accuracy(model: Path) -> float:
    """de queries against en passages, in-sample: top-1 accuracy."""
    encoder = Encoder(model, version="probe", device="cpu")
    queries = encoder.encode([g["query"]["de"] for g in GROUPS], "query")
    passages = encoder.encode([g["passage"]["en"] for g in GROUPS], "passage")
    return float(np.mean((queries @ passages.T).argmax(axis=1) == np.arange(len(GROUPS))))


@pytest.fixture(scope="module")
def trained(base_model: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Progress]]:
    seen: list[Progress] = []
    out = tmp_path_factory.mktemp("out") / "hybrid-v1"
    result = finetune(str(base_model), data, out, fast(val_fraction=0.1), progress=seen.append, logging_steps=10)
    assert result.path == out and result.version == "hybrid-v1" and not result.cancelled
    return out, seen


def test_training_lowers_the_loss_and_improves_cross_lingual_retrieval(
    base_model: Path, trained: tuple[Path, list[Progress]]
) -> None:
    out, _ = trained
    curve = json.loads((out / "xling.json").read_text())["training"]["loss_curve"]
    first, last = curve[0][1], curve[-1][1]
    assert last < first - 0.3, curve
    before, after = cross_accuracy(base_model), cross_accuracy(out)
    assert after >= before + 0.1, (before, after)


def test_progress_is_reported_every_step(trained: tuple[Path, list[Progress]]) -> None:
    out, seen = trained
    assert [p.step for p in seen] == [*range(1, 121), 120]  # the last step again, once its loss is logged
    assert all(p.total == 120 for p in seen)
    assert seen[-1].eta_s == 0 and seen[-1].samples_per_s > 0 and seen[-1].loss is not None
    final = json.loads((out / "xling.json").read_text())["metrics"]["final_logged_loss"]
    assert seen[-1].loss == final  # the last progress event and the final metrics show one quantity


def test_output_loads_in_sentence_transformers_and_our_encoder(trained: tuple[Path, list[Progress]]) -> None:
    from sentence_transformers import SentenceTransformer

    out, _ = trained
    assert not (out / "checkpoints").exists()
    assert (out / "model.safetensors").exists()
    texts = [g["passage"]["fr"] for g in GROUPS[:10]]
    ours = Encoder(out, version="hybrid-v1", device="cpu").encode(texts, "passage")
    st_model = SentenceTransformer(str(out), device="cpu")
    theirs = st_model.encode(texts, prompt_name="document", normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    queries = Encoder(out, version="hybrid-v1", device="cpu").encode(["en01w en02w"], "query")
    np.testing.assert_allclose(
        queries, st_model.encode(["en01w en02w"], prompt_name="query", normalize_embeddings=True), atol=1e-5
    )


def test_manifest_describes_the_run(trained: tuple[Path, list[Progress]], base_model: Path) -> None:
    out, _ = trained
    manifest = json.loads((out / "xling.json").read_text())
    assert manifest["version"] == "hybrid-v1"
    assert manifest["base_model"] == str(base_model)
    assert manifest["pooling"] == "mean" and manifest["normalize"] is True
    assert (manifest["query_prefix"], manifest["passage_prefix"]) == ("Query: ", "Passage: ")
    assert manifest["max_length"] == 32
    training = manifest["training"]
    for key in ("strategy", "alpha", "batch_size", "learning_rate", "weight_decay", "max_steps", "seed", "scale"):
        assert key in training
    assert training["strategy"] == "hybrid" and training["alpha"] == 0.5
    assert training["train_groups"] == 180 and training["val_groups"] == 20
    composition = training["batch_composition_epoch0"]
    assert composition["mono_batches"] > 0 and composition["cross_batches"] > 0
    assert manifest["data_fingerprint"].startswith("sha256:")
    assert set(manifest["metrics"]) >= {"train_loss", "val_loss", "steps"}
    assert manifest["metrics"]["steps"] == 120
    assert manifest["created_at"] and manifest["parent_version"]


def test_cancel_then_resume(base_model: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumable"
    config = fast(max_steps=30, checkpoint_steps=10)
    steps: list[int] = []
    result = finetune(
        str(base_model),
        data,
        out,
        config,
        progress=lambda p: steps.append(p.step),
        should_cancel=lambda: len(steps) >= 15,
    )
    assert result.cancelled and result.path is None and result.steps == 15
    assert not (out / "xling.json").exists()
    assert (out / "checkpoints" / "checkpoint-15").is_dir()  # saved when the cancel came

    half_written = out / "checkpoints" / "checkpoint-25"  # as a worker killed mid-save leaves it
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"partial")

    resumed_steps: list[int] = []
    resumed = finetune(
        str(base_model), data, out, config, progress=lambda p: resumed_steps.append(p.step), resume_from=True
    )
    assert resumed_steps[0] == 16 and resumed.steps == 30  # from checkpoint-15, not the broken 25

    straight = finetune(str(base_model), data, tmp_path / "straight", config)
    assert straight.steps == resumed.steps
    # same sampler state and optimizer state: the resumed weights match the uninterrupted run's
    probe = [g["query"]["es"] for g in GROUPS[:8]]
    np.testing.assert_allclose(
        Encoder(out, version="a", device="cpu").encode(probe, "query"),
        Encoder(tmp_path / "straight", version="b", device="cpu").encode(probe, "query"),
        atol=1e-4,
    )


def test_lareqa_folder_trains_too(base_model: Path, tmp_path: Path) -> None:
    folder = write_lareqa(tmp_path / "lareqa", GROUPS[:40])
    result = finetune(str(base_model), folder, tmp_path / "from-lareqa", fast(max_steps=3, strategy="crosslingual"))
    assert result.steps == 3 and (tmp_path / "from-lareqa" / "xling.json").exists()


def test_bad_configuration_and_data_are_refused_before_training(base_model: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="alpha"):
        finetune(str(base_model), data, tmp_path / "x", fast(alpha=2.0))
    with pytest.raises(ValueError, match="strategy"):
        finetune(str(base_model), data, tmp_path / "x", fast(strategy="bilingual"))
    with pytest.raises(ValueError, match="early stopping needs a validation split"):
        finetune(str(base_model), data, tmp_path / "x", fast(early_stopping_patience=2))
    one_language = write_jsonl(tmp_path / "en.jsonl", make_groups(20, seed=0, langs=["en"]))
    with pytest.raises(DataError, match="at least two languages"):
        finetune(str(base_model), one_language, tmp_path / "x", fast(strategy="crosslingual"))
    assert not (tmp_path / "x").exists()


def test_early_stopping_on_the_validation_split(base_model: Path, data: Path, tmp_path: Path) -> None:
    config = fast(max_steps=400, val_fraction=0.2, eval_steps=5, early_stopping_patience=1, learning_rate=5e-2)
    result = finetune(str(base_model), data, tmp_path / "early", config)
    assert result.steps < 400, "validation loss never stopped improving at a learning rate this high"
    assert "val_loss" in result.metrics


@pytest.fixture(scope="module")
def prefixed_base(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model declaring E5-style prefixes in its sentence-transformers prompts."""
    import shutil

    folder = tmp_path_factory.mktemp("prefixed") / "tiny-prompts"
    shutil.copytree(base_model, folder)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["prompts"] = {"query": "query: ", "passage": "passage: "}
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("explicit", "expected"),
    [((None, None), ("query: ", "passage: ")), (("Q> ", ""), ("Q> ", ""))],
    ids=["base-prefixes-win-over-the-paper", "explicit-prefixes-win-over-the-base"],
)
def test_prefixes_follow_the_base_unless_given(
    prefixed_base: Path, data: Path, tmp_path: Path, explicit: tuple[str | None, str | None], expected: tuple[str, str]
) -> None:
    config = fast(max_steps=2, query_prefix=explicit[0], passage_prefix=explicit[1])
    result = finetune(str(prefixed_base), data, tmp_path / "out", config)
    assert result.path is not None
    manifest = json.loads((result.path / "xling.json").read_text())
    assert (manifest["query_prefix"], manifest["passage_prefix"]) == expected
    assert (manifest["training"]["query_prefix"], manifest["training"]["passage_prefix"]) == expected
    encoder = Encoder(result.path, version="p", device="cpu")
    assert (encoder.query_prefix, encoder.passage_prefix) == expected


def test_frozen_embeddings_stay_fixed_while_the_rest_trains(base_model: Path, data: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    result = finetune(str(base_model), data, tmp_path / "frozen", fast(max_steps=3, freeze_embeddings=True))
    assert result.path is not None
    before, after = load_file(str(base_model / "model.safetensors")), load_file(str(result.path / "model.safetensors"))
    word = next(k for k in before if k.endswith("word_embeddings.weight"))
    np.testing.assert_array_equal(before[word], after[word])
    query = next(k for k in before if k.endswith("layer.0.attention.self.query.weight"))
    assert not np.allclose(before[query], after[query])


def test_two_datasets_mix_by_the_shares_and_the_manifest_states_the_passes(base_model: Path, tmp_path: Path) -> None:
    qa = write_jsonl(tmp_path / "qa.jsonl", make_groups(80, seed=4))
    rare = tmp_path / "rare"
    rare.mkdir()
    lines = make_groups(12, seed=8)
    (rare / "t.de-en.de").write_text("".join(g["query"]["de"] + "\n" for g in lines))
    (rare / "t.de-en.en").write_text("".join(g["query"]["en"] + "\n" for g in lines))
    # The budget in passes over the bitext: 3 passes over 12 pairs, in half of the batches of 4 -> 18 steps.
    config = fast(strategy="crosslingual", max_steps=None, bitext_passes=3, batch_size=4,
                  mixing={"qa": 0.5, "rare": 0.5})
    result = finetune(str(base_model), [qa, rare], tmp_path / "mixed", config, dataset_names=["qa", "rare"])
    assert result.path is not None and result.steps == 18
    mixing = json.loads((result.path / "xling.json").read_text())["training"]["mixing"]
    assert mixing["qa"]["share"] == 0.5 and mixing["rare"]["cross_groups"] == 12
    drawn = mixing["qa"]["cross_pairs_drawn"] + mixing["rare"]["cross_pairs_drawn"]
    assert drawn == 18 * 4  # every step a cross-lingual batch of 4, from one dataset or the other
    assert mixing["rare"]["passes"] == round(mixing["rare"]["cross_pairs_drawn"] / 12, 2) > 1
    with pytest.raises(ValueError, match="not in the training data"):
        finetune(str(base_model), [qa, rare], tmp_path / "bad", fast(mixing={"other": 1.0}),
                 dataset_names=["qa", "rare"])


def passage_drift(base: Path, model: Path) -> float:
    """Mean 1 − cosine between the base's and the model's embeddings of the training passages."""
    texts = [text for g in GROUPS for text in g["passage"].values()]
    before = Encoder(base, version="base", device="cpu").encode(texts, "passage")
    after = Encoder(model, version="probe", device="cpu").encode(texts, "passage")
    return float(np.mean(1.0 - np.sum(before * after, axis=1)))


def test_the_anchor_keeps_the_monolingual_texts_near_the_base(base_model: Path, data: Path, tmp_path: Path) -> None:
    free = finetune(str(base_model), data, tmp_path / "free", fast(strategy="monolingual", max_steps=30))
    anchored = finetune(str(base_model), data, tmp_path / "anchored",
                        fast(strategy="monolingual", max_steps=30, anchor_distillation=20.0))
    assert free.path is not None and anchored.path is not None
    moved, kept = passage_drift(base_model, free.path), passage_drift(base_model, anchored.path)
    assert kept < 0.5 * moved, (kept, moved)
    assert json.loads((anchored.path / "xling.json").read_text())["training"]["anchor_distillation"] == 20.0
    with pytest.raises(ValueError, match="monolingual batches"):
        finetune(str(base_model), data, tmp_path / "bad", fast(strategy="crosslingual", anchor_distillation=1.0))


def test_anchored_texts_are_those_in_the_languages_of_the_monolingual_pairs() -> None:
    from xling.models.data.parallel import ParallelGroup, all_pairs
    from xling.models.training.trainer import pair_dataset

    qa = ParallelGroup("q1", {"de": "frage", "en": "question"}, {"de": "antwort", "en": "answer"})
    bitext = ParallelGroup("b1", {"kzj": "kadazan", "en": "english"}, {"kzj": "kadazan", "en": "english"},
                           cross_only=True)
    groups = [qa, bitext]
    pairs = all_pairs(groups)
    rows = pair_dataset(groups, pairs, TrainConfig(anchor_distillation=1.0))
    labels = {(groups[g].id, q, p): label for (g, q, p), label in zip(pairs, rows["label"], strict=True)}
    assert labels[("q1", "de", "de")] == [1.0, 1.0] and labels[("q1", "de", "en")] == [1.0, 1.0]
    assert labels[("b1", "kzj", "en")] == [0.0, 1.0] and labels[("b1", "en", "kzj")] == [1.0, 0.0]
    assert "label" not in pair_dataset(groups, pairs, TrainConfig()).column_names
