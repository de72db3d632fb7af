"""Train one LoRA adapter per language: the adapted encoder maps a sentence onto the base's embedding of its
translation, so the language joins the base's space without the base moving.

Why a loop of our own and not sentence-transformers' trainer: the targets are fixed vectors (the frozen base's
embeddings of the other side, computed once), every training target is a negative for every step (a few hundred
rows: cheaper than encoding them again and far more negatives than a batch holds), and only the adapter's
weights change. Why peft: LoRA layers with a standard on-disk format (adapter_config.json +
adapter_model.safetensors) that the encoder loads several of beside one base, each switched on per forward.

The loss per step, on a batch of the language's sentences encoded by the adapted model: InfoNCE against all
training targets (cosine × scale) plus `distillation` × the squared distance to the own target. Steps alternate
between the query and the passage prefix, each against the base's embedding of the translation with the same
prefix, so the adapter serves the language both as queries and as documents.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from xling.models.adapters.config import AdapterConfig
from xling.models.adapters.versions import write_version_with_adapters
from xling.models.data.bitext import BitextPair
from xling.models.encoder import Encoder, TextKind, pool
from xling.models.language import LanguageProfile
from xling.models.resolve import ModelSource

log = logging.getLogger(__name__)

KINDS: tuple[TextKind, TextKind] = ("query", "passage")


@dataclass(frozen=True)
class LanguageBitext:
    """One language's sentences and their translations (the targets), gathered from every pair that has it."""

    lang: str
    sentences: list[str]
    translations: list[str]
    target_langs: list[str]
    pairs: list[str]  # the bitext pairs' names, for the manifest


def language_bitext(pairs: list[BitextPair], lang: str) -> LanguageBitext:
    """`lang`'s side of every pair that has it, against the other side; raises when no pair has it."""
    sentences: list[str] = []
    translations: list[str] = []
    target_langs: set[str] = set()
    names = []
    for pair in pairs:
        if lang not in (pair.src, pair.tgt) or pair.src == pair.tgt:
            continue
        own, other = (pair.src_lines, pair.tgt_lines) if pair.src == lang else (pair.tgt_lines, pair.src_lines)
        sentences.extend(own)
        translations.extend(other)
        target_langs.add(pair.tgt if pair.src == lang else pair.src)
        names.append(pair.name)
    if not sentences:
        raise ValueError(f"no bitext pair has language {lang!r}")
    return LanguageBitext(lang, sentences, translations, sorted(target_langs), names)


@dataclass(frozen=True)
class AdapterProgress:
    lang: str
    step: int
    total: int
    loss: float | None
    val_accuracy: float | None
    eta_s: float | None


@dataclass
class TrainedAdapter:
    lang: str
    path: Path
    steps: int
    best_step: int
    train_seconds: float
    stopped_by: str  # max_steps | early_stopping | max_seconds | cancelled
    val_accuracy: float  # mean over both prefixes of accuracy@1 against all targets, at best_step
    base_val_accuracy: float  # the same for the base (step 0); best_step 0 = the adapter changes nothing
    train_pairs: int
    val_pairs: int
    pairs: list[str]
    target_langs: list[str]
    config: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of it (the path relative to the version folder)."""
        data = asdict(self)
        data["path"] = f"adapters/{self.lang}"
        return data


ProgressFn = Callable[[AdapterProgress], None]
CancelFn = Callable[[], bool]


def embed(model: torch.nn.Module, encoder: Encoder, texts: list[str], kind: TextKind) -> torch.Tensor:
    """L2-normalised embeddings of `texts` through `model` (the adapted transformer), with gradients."""
    prefix = encoder.query_prefix if kind == "query" else encoder.passage_prefix
    batch = encoder.tokenizer(
        [prefix + t for t in texts], truncation=True, max_length=encoder.max_length, padding=True, return_tensors="pt"
    ).to(encoder.device)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.normalize(pool(hidden, batch["attention_mask"], encoder.pooling), dim=-1)


def adapter_loss(emb: torch.Tensor, targets: torch.Tensor, own: torch.Tensor, scale: float, distillation: float,
                 symmetric: bool = False) -> torch.Tensor:
    """InfoNCE of each row against all targets (row i's own is targets[own[i]]); `symmetric`: plus each own target
    against the batch's rows (the other direction of retrieval: a translation finding its sentence);
    + distillation × squared distance."""
    assert emb.shape[1] == targets.shape[1] and emb.shape[0] == own.shape[0], (emb.shape, targets.shape, own.shape)
    loss = F.cross_entropy(scale * emb @ targets.T, own)
    if symmetric:
        loss = loss + F.cross_entropy(scale * targets[own] @ emb.T, torch.arange(len(own), device=emb.device))
    if distillation:
        loss = loss + distillation * (emb - targets[own]).pow(2).sum(dim=1).mean()
    return loss


def mapping_accuracy(emb: np.ndarray, targets: np.ndarray, own: np.ndarray) -> float:
    """Share of rows whose own target scores strictly above every other target (ties count as misses)."""
    scores = emb @ targets.T
    own_scores = scores[np.arange(len(own)), own]
    scores[np.arange(len(own)), own] = -np.inf
    return float(np.mean(own_scores > scores.max(axis=1)))


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_adapter(
    base_path: Path,
    bitext: LanguageBitext,
    out: Path,
    config: AdapterConfig | None = None,
    *,
    device: str = "auto",
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> TrainedAdapter:
    """Train `bitext.lang`'s adapter on the base at `base_path`; writes it (peft layout) to `out`."""
    config = config or AdapterConfig()
    config.validate()
    torch.manual_seed(config.seed)
    encoder = Encoder(base_path, version="adapter-base", device=device, max_length=config.max_length,
                      with_adapters=False)
    started = time.monotonic()
    # The targets: the untouched base's embeddings of the translations, one matrix per prefix.
    targets = {kind: encoder.encode(bitext.translations, kind) for kind in KINDS}
    train_rows, val_rows = _split(len(bitext.sentences), config.val_fraction, config.seed)
    model = get_peft_model(
        encoder.model,
        LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=list(config.target_modules),
                   lora_dropout=0.0, bias="none"),
    )
    train_targets = {kind: torch.from_numpy(targets[kind][train_rows]).to(encoder.device) for kind in KINDS}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / config.max_steps)
    shuffler = random.Random(config.seed)
    queue: list[int] = []
    # Step 0 is the base itself (peft starts LoRA's B at zero): an adapter that never beats it stays a no-op.
    base_accuracy = _validate(model, encoder, bitext, targets, val_rows)
    best = (base_accuracy, 0, _lora_state(model))
    evaluations_without_gain, step, stopped_by, loss_value, evaluated = 0, 0, "max_steps", None, 0
    while step < config.max_steps:
        if should_cancel is not None and should_cancel():
            stopped_by = "cancelled"
            break
        if config.max_seconds is not None and time.monotonic() - started > config.max_seconds:
            stopped_by = "max_seconds"
            break
        if len(queue) < config.batch_size:
            epoch = list(range(len(train_rows)))
            shuffler.shuffle(epoch)
            queue.extend(epoch)
        batch, queue = queue[: config.batch_size], queue[config.batch_size :]
        kind = KINDS[step % len(KINDS)]
        model.train()
        emb = embed(model, encoder, [bitext.sentences[train_rows[i]] for i in batch], kind)
        loss = adapter_loss(emb, train_targets[kind], torch.tensor(batch, device=encoder.device), config.scale,
                            config.distillation, config.symmetric)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        loss_value = float(loss.item())
        val_accuracy = None
        if step % config.eval_steps == 0 or step == config.max_steps:
            val_accuracy, evaluated = _validate(model, encoder, bitext, targets, val_rows), step
            if val_accuracy > best[0]:
                best, evaluations_without_gain = (val_accuracy, step, _lora_state(model)), 0
            else:
                evaluations_without_gain += 1
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(AdapterProgress(bitext.lang, step, config.max_steps, loss_value, val_accuracy,
                                     elapsed / step * (config.max_steps - step)))
        if (config.early_stopping_patience and step < config.max_steps
                and evaluations_without_gain >= config.early_stopping_patience):
            stopped_by = "early_stopping"
            break
    if stopped_by == "max_seconds" and step > evaluated:  # out of time between evaluations: score the last steps
        accuracy = _validate(model, encoder, bitext, targets, val_rows)
        if accuracy > best[0]:
            best = (accuracy, step, _lora_state(model))
    set_peft_model_state_dict(model, best[2])
    out.mkdir(parents=True, exist_ok=True)
    _save(model, out)
    # What language detection learns of it, so its text is routed here without a `lang` (models/language.py).
    LanguageProfile.learn(bitext.sentences).save(out)
    seconds = round(time.monotonic() - started, 1)
    log.info("adapter trained", extra={"lang": bitext.lang, "steps": step, "best_step": best[1],
                                       "val_accuracy": best[0], "seconds": seconds, "stopped_by": stopped_by})
    return TrainedAdapter(
        lang=bitext.lang, path=out, steps=step, best_step=best[1], train_seconds=seconds, stopped_by=stopped_by,
        val_accuracy=round(best[0], 4), base_val_accuracy=round(base_accuracy, 4), train_pairs=len(train_rows),
        val_pairs=len(val_rows), pairs=bitext.pairs, target_langs=bitext.target_langs, config=asdict(config),
    )


def _lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()}


def _validate(model: PeftModel, encoder: Encoder, bitext: LanguageBitext, targets: dict[TextKind, np.ndarray],
              val_rows: np.ndarray) -> float:
    """Mean over both prefixes: held-out sentences mapped onto their own translation among all translations."""
    model.eval()
    texts = [bitext.sentences[i] for i in val_rows]
    scores = []
    with torch.inference_mode():
        for kind in KINDS:
            emb = np.concatenate([
                embed(model, encoder, texts[i : i + 64], kind).float().cpu().numpy() for i in range(0, len(texts), 64)
            ])
            scores.append(mapping_accuracy(emb, targets[kind], val_rows))
    return float(np.mean(scores))


def _save(model: PeftModel, out: Path) -> None:
    """The adapter's weights and config only (safetensors); peft's model card is not ours to ship."""
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)


def train_adapters(
    base: ModelSource,
    pairs: list[BitextPair],
    langs: list[str],
    out: Path,
    config: AdapterConfig | None = None,
    *,
    version: str | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> list[TrainedAdapter] | None:
    """One adapter per language of `langs` on `base`'s shared weights (adapters it carries
    are kept, except those of `langs`, which are trained anew), written as a new version at `out`: the base's files
    plus the adapters. None when cancelled (nothing written)."""
    bitexts = [language_bitext(pairs, lang) for lang in langs]  # every language checked before any training
    work = out.with_name(f".{out.name}.adapters")
    shutil.rmtree(work, ignore_errors=True)
    trained = []
    try:
        for bitext in bitexts:
            result = train_adapter(base.path, bitext, work / bitext.lang, config, device=device, progress=progress,
                                   should_cancel=should_cancel)
            if result.stopped_by == "cancelled":
                return None
            trained.append(result)
        write_version_with_adapters(
            base.path, out, {t.lang: (t.path, t.record()) for t in trained}, version=version or out.name,
            parent_version=base.version, name_hint=base.name,
            training={"kind": "adapters", "languages": langs, "config": asdict(config or AdapterConfig())},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return trained
