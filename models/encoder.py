"""Text encoder over a sentence-transformers-layout folder: batched, length-sorted, L2-normalised float32."""

from __future__ import annotations

import json
import logging
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from xling.models.adapters.bundle import adapter_folder, adapter_records, attach_adapters
from xling.models.language import DETECTOR, LanguageDetector, LanguageProfile
from xling.models.manifest import read_manifest

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

TextKind = Literal["query", "passage"]
Precision = Literal["auto", "fp32", "bf16", "int8"]
Langs = Sequence[str | None] | None  # each text's language (None: unknown), for routing to per-language adapters


class EncodeFn(Protocol):
    """What evaluators need of an encoder: texts in, unit rows out; `langs` routes texts to their adapters."""

    def __call__(self, texts: list[str], kind: TextKind, langs: Langs = None) -> np.ndarray: ...


def encode_in_steps(encode: EncodeFn, dim: int, after_step: Callable[[TextKind, int, int], None], step: int = 256
                    ) -> EncodeFn:
    """`encode`, called `step` texts at a time, with `after_step(kind, done, total)` after each (progress of a long
    encode, and a point where a caller may stop it by raising)."""

    def stepped(texts: list[str], kind: TextKind, langs: Langs = None) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), step):
            end = start + step
            parts.append(encode(texts[start:end], kind, None if langs is None else langs[start:end]))
            after_step(kind, min(end, len(texts)), len(texts))
        return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)

    return stepped

POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")
# sentence-transformers < 6 wrote one boolean per mode; 6.x writes `pooling_mode`.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}
# Model families whose training used fixed prefixes that their folders do not record.
_KNOWN_PREFIXES: list[tuple[re.Pattern[str], tuple[str, str]]] = [
    (re.compile(r"(^|[/_-])e5([-_]|$)", re.IGNORECASE), ("query: ", "passage: ")),
]
_FALLBACK_MAX_LENGTH = 512
DEFAULT_BATCH_TOKENS_GPU = 32_768


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce (batch, tokens, dim) token embeddings to (batch, dim); padding is masked out."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        summed = (token_embeddings * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / (counts.sqrt() if mode == "mean_sqrt_len_tokens" else counts)
    if mode == "cls":
        return token_embeddings[:, 0]
    if mode == "max":
        masked = token_embeddings.masked_fill(mask == 0, torch.finfo(token_embeddings.dtype).min)
        return masked.max(dim=1).values
    if mode == "lasttoken":
        # Right padding: the last real token sits at length - 1.
        last = attention_mask.sum(dim=1).long().clamp(min=1) - 1
        return token_embeddings[torch.arange(token_embeddings.shape[0]), last]
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


@dataclass(frozen=True)
class FolderLayout:
    """What a sentence-transformers folder says about how to run its transformer."""

    transformer_dir: Path
    pooling: str
    max_length: int | None
    query_prefix: str
    passage_prefix: str


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _pooling_from_config(config: dict[str, Any]) -> str:
    mode = config.get("pooling_mode")
    if isinstance(mode, list):
        if len(mode) != 1:
            raise ValueError(f"concatenated pooling modes {mode} are not supported")
        mode = mode[0]
    if mode is None:
        enabled = [name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key)]
        if len(enabled) != 1:
            raise ValueError(f"pooling config must enable exactly one mode, found {enabled or 'none'}")
        mode = enabled[0]
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    return str(mode)


def known_prefixes(name: str) -> tuple[str, str]:
    for pattern, prefixes in _KNOWN_PREFIXES:
        if pattern.search(name):
            return prefixes
    return ("", "")


def read_layout(folder: Path, name_hint: str = "") -> FolderLayout:
    """Read modules.json, the pooling config, max length and prefixes (manifest first, then ST prompts)."""
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").is_file() else []
    transformer_dir, pooling = folder, None
    for module in modules:
        kind = str(module.get("type", ""))
        path = folder / module.get("path", "")
        if kind.endswith("Transformer"):
            transformer_dir = path
        elif kind.endswith("Pooling"):
            pooling = _pooling_from_config(_read_json(path / "config.json"))
    if pooling is None:
        log.warning("no pooling module in %s; using mean pooling", folder)
        pooling = "mean"

    st_config = _read_json(transformer_dir / "sentence_bert_config.json")
    max_length = st_config.get("max_seq_length")
    if max_length is None:
        tokenizer_max = _read_json(transformer_dir / "tokenizer_config.json").get("model_max_length")
        # Tokenizers without a limit store a huge sentinel (int(1e30)).
        if isinstance(tokenizer_max, int) and tokenizer_max < 100_000:
            max_length = tokenizer_max

    query_prefix, passage_prefix = known_prefixes(name_hint or folder.name)
    prompts = _read_json(folder / "config_sentence_transformers.json").get("prompts") or {}
    if prompts.get("query") or prompts.get("document") or prompts.get("passage"):
        query_prefix = prompts.get("query", "")
        passage_prefix = prompts.get("document", prompts.get("passage", ""))

    manifest = read_manifest(folder)
    if manifest is not None:
        pooling, query_prefix, passage_prefix = manifest.pooling, manifest.query_prefix, manifest.passage_prefix
        max_length = manifest.max_length
    # No Normalize flag: the encoder L2-normalises every vector, whatever the folder says.
    return FolderLayout(transformer_dir, pooling, max_length, query_prefix, passage_prefix)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_cpu_precision(requested: Precision) -> Literal["fp32", "bf16", "int8"]:
    """`auto` = bf16 where the CPU has it (measured on multilingual-e5-small: 2.65x fp32 for batches of 32
    at no measurable mAP loss, bench/RESULTS.md), else fp32."""
    if requested == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return requested


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch dynamic int8 quantisation of every Linear layer (weights int8, activations quantised per batch)."""
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is deprecated in favour of torchao; it is still PyTorch's own
        # well-tested path, and the only one that needs no extra package.
        warnings.simplefilter("ignore")
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return quantized


class Encoder:
    """Turns texts into L2-normalised float32 vectors; prefixes are applied here, never by callers."""

    def __init__(
        self,
        folder: Path,
        *,
        version: str,
        device: str = "auto",
        max_length: int | None = None,
        batch_size: int = 256,
        batch_tokens: int | None = None,
        name_hint: str = "",
        precision: Precision = "fp32",
        with_adapters: bool = True,
    ) -> None:
        """`with_adapters` False: the shared weights alone, whatever adapters the version carries."""
        self.folder = Path(folder)
        self.version = version
        self.layout = read_layout(self.folder, name_hint)
        self.device = pick_device(device)
        self.batch_size = batch_size
        # Padded tokens per forward. Small on CPU, where padding costs as much as real tokens
        # (measured: 1024 beats 8192 by 1.7x on MLQA-R sentences); large on GPU, which wants big batches.
        self.batch_tokens = batch_tokens or (DEFAULT_BATCH_TOKENS_GPU if self.device.type == "cuda" else 1024)
        hf_logging.disable_progress_bar()  # "Loading weights" bars do not belong in service logs
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.layout.transformer_dir))
        if self.device.type == "cuda":
            self.precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            self.precision = pick_cpu_precision(precision)
        # Load straight into the dtype that runs: a float32 copy first would stay in the process's RSS.
        # A folder saved in fp16 loads as float32 on CPU, where fp16 arithmetic is slow.
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        # safetensors only: a pickled checkpoint is refused instead of executed.
        self.model = AutoModel.from_pretrained(str(self.layout.transformer_dir), use_safetensors=True, dtype=dtype)
        self.model = self.model.to(self.device)
        self.adapters = sorted(adapter_records(self.folder)) if with_adapters else []
        if self.adapters and self.precision == "int8":
            raise ValueError(f"{self.folder} carries language adapters ({', '.join(self.adapters)}); int8 "
                             "quantisation replaces the layers they attach to: serve it in fp32 or bf16")
        if self.precision == "int8":
            self.model = quantize_int8(self.model)
        if self.adapters:
            self.model = attach_adapters(self.model, self.folder, self.adapters)
        # peft switches adapters by state on the shared layers: one forward at a time when there are adapters.
        self._adapter_lock = threading.Lock()
        self.model.eval()
        model_limit = getattr(self.model.config, "max_position_embeddings", _FALLBACK_MAX_LENGTH)
        candidates = [n for n in (max_length, self.layout.max_length, model_limit, _FALLBACK_MAX_LENGTH) if n]
        self.max_length = int(min(candidates))
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def pooling(self) -> str:
        return self.layout.pooling

    @property
    def query_prefix(self) -> str:
        return self.layout.query_prefix

    @property
    def passage_prefix(self) -> str:
        return self.layout.passage_prefix

    @cached_property
    def detector(self) -> LanguageDetector:
        """The language detector for this version's texts: the built-in languages plus those its adapters learnt
        from their training sentences (so text in a tuned language can be routed without a `lang`)."""
        profiles = {lang: profile for lang in self.adapters
                    if (profile := LanguageProfile.load(adapter_folder(self.folder, lang))) is not None}
        return LanguageDetector(profiles) if profiles else DETECTOR

    def adapter_for(self, lang: str | None) -> str | None:
        """The adapter that encodes text in `lang`, or None for the shared weights."""
        return lang if lang is not None and lang in self.adapters else None

    def encode(self, texts: list[str], kind: TextKind, langs: Langs = None) -> np.ndarray:
        """Encode texts as queries or passages; returns (len(texts), dim) float32 rows of unit norm.
        `langs` (one per text) sends the texts of an adapted language through its adapter."""
        return self.encode_counted(texts, kind, langs)[0]

    def encode_counted(self, texts: list[str], kind: TextKind, langs: Langs = None) -> tuple[np.ndarray, list[int]]:
        """`encode`, plus the tokens the model read per text (prefix and special tokens included, after truncation)."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")
        if langs is not None and len(langs) != len(texts):
            raise ValueError(f"{len(langs)} languages for {len(texts)} texts")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, []
        prefix = self.query_prefix if kind == "query" else self.passage_prefix
        token_ids: list[list[int]] = self.tokenizer(
            [prefix + text for text in texts], truncation=True, max_length=self.max_length
        )["input_ids"]
        for adapter, group in self.route(langs, len(texts)).items():
            # Longest first, so neighbours have similar lengths (little padding) and memory peaks show up at once.
            order = sorted(group, key=lambda i: -len(token_ids[i]))
            start = 0
            while start < len(order):
                width = len(token_ids[order[start]])  # the longest in this batch sets the padded width
                rows = order[start : start + max(1, min(self.batch_size, self.batch_tokens // width))]
                out[rows] = self._encode_ids([token_ids[i] for i in rows], adapter)
                start += len(rows)
        return out, [len(ids) for ids in token_ids]

    def route(self, langs: Langs, count: int) -> dict[str | None, list[int]]:
        """Text positions grouped by the adapter that encodes them (None: the shared weights), one forward
        sequence per group; without adapters, every text in one group."""
        if not self.adapters or langs is None:
            return {None: list(range(count))}
        groups: dict[str | None, list[int]] = {}
        for i, lang in enumerate(langs):
            groups.setdefault(self.adapter_for(lang), []).append(i)
        return groups

    def _encode_ids(self, batch: list[list[int]], adapter: str | None = None) -> np.ndarray:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        with torch.inference_mode():
            hidden = self._forward(input_ids, attention_mask, adapter)
            pooled = pool(hidden.float(), attention_mask, self.pooling)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter: str | None) -> torch.Tensor:
        if not self.adapters:
            hidden: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return hidden
        model = cast("PeftModel", self.model)
        with self._adapter_lock:
            if adapter is None:
                # Disabled LoRA layers compute their base layer alone: the shared weights' exact arithmetic.
                with model.disable_adapter():
                    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            else:
                model.set_adapter(adapter)
                hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden
