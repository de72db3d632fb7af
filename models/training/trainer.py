"""Hybrid batch fine-tuning on sentence-transformers' trainer, with our samplers and InfoNCE loss.

`finetune()` is the library API the CLI and the worker call: explicit arguments in, a self-describing
model version folder out, progress and cancellation through two callables.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from accelerate.data_loader import prepare_data_loader
from datasets import Dataset, disable_progress_bars
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from torch.utils.data import BatchSampler, DataLoader
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from xling.models.data.parallel import ParallelGroup, all_pairs, check_strategy, fingerprint, split
from xling.models.data.training_data import load_training_data
from xling.models.encoder import FolderLayout, read_layout
from xling.models.manifest import Manifest, write_manifest
from xling.models.resolve import resolve_model, version_from_name
from xling.models.training.config import TrainConfig
from xling.models.training.interpolate import interpolate_on_validation
from xling.models.training.loss import InfoNCELoss, world
from xling.models.training.samplers import HybridBatchSampler, RankSlices, make_sampler

log = logging.getLogger(__name__)

PAPER_PREFIXES = ("Query: ", "Passage: ")  # the hybrid-batch paper's, for bases trained without any


def resolve_prefixes(config: TrainConfig, layout: FolderLayout) -> tuple[str, str]:
    """The prefixes a run trains (and its model is served) with: explicit, else the base's, else the paper's."""
    declared = (layout.query_prefix, layout.passage_prefix)
    defaults = declared if any(declared) else PAPER_PREFIXES
    query = config.query_prefix if config.query_prefix is not None else defaults[0]
    passage = config.passage_prefix if config.passage_prefix is not None else defaults[1]
    return query, passage


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float | None
    samples_per_s: float
    eta_s: float | None


@dataclass
class TrainResult:
    path: Path | None  # None when cancelled, and on every rank but the first of a distributed run
    version: str | None
    steps: int
    cancelled: bool
    metrics: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class _Reporter(TrainerCallback):
    """Forwards progress to the caller and polls the cancel check once per step."""

    def __init__(self, batch_size: int, progress: ProgressFn | None, should_cancel: CancelFn | None) -> None:
        self.batch_size = batch_size
        self.progress = progress
        self.should_cancel = should_cancel
        self.cancelled = False
        self.last_loss: float | None = None
        self.losses: list[tuple[int, float]] = []
        self._started = time.monotonic()
        self._first_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._started, self._first_step = time.monotonic(), state.global_step

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            self.losses.append((state.global_step, self.last_loss))
            # The trainer logs after on_step_end, so step N's event shows the loss logged before it; at the last
            # step report again, so the final event carries final_logged_loss (mean over the last logging_steps).
            if state.global_step >= state.max_steps:
                self._report(args, state)

    def _report(self, args: TrainingArguments, state: TrainerState) -> None:
        if self.progress is not None and state.is_world_process_zero:
            done = state.global_step - self._first_step
            elapsed = max(time.monotonic() - self._started, 1e-9)
            per_step = elapsed / max(done, 1)
            samples = done * self.batch_size * args.gradient_accumulation_steps
            eta = per_step * (state.max_steps - state.global_step) if done else None
            self.progress(Progress(state.global_step, state.max_steps, self.last_loss, samples / elapsed, eta))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._report(args, state)
        if _on_every_rank(self.should_cancel is not None and self.should_cancel()):
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = True  # a checkpoint to resume from, should the user retry


def _on_every_rank(flag: bool) -> bool:
    """Whether any rank says so: under torch.distributed the ranks must stop at the same step, or the ones still
    training wait forever for the others' gradients; alone, the flag itself."""
    _, size = world()
    if size == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    said = torch.tensor([int(flag)], device=device)
    dist.all_reduce(said, op=dist.ReduceOp.MAX)
    return bool(said.item())


class _HybridTrainer(SentenceTransformerTrainer):
    """Uses our batch samplers for the train and validation datasets.

    Under torch.distributed (torchrun), every rank takes its slice of each global batch (`RankSlices`), and the
    data loaders are not sharded again by accelerate, which would give each rank whole batches of its own (a
    monolingual batch of a different language on each device, mixed once negatives are gathered)."""

    def __init__(self, *args: Any, samplers: dict[str, HybridBatchSampler], **kwargs: Any) -> None:
        self._samplers = samplers
        super().__init__(*args, **kwargs)

    def get_batch_sampler(self, dataset: Any, *args: Any, **kwargs: Any) -> BatchSampler:
        if dataset is self.train_dataset:
            sampler = self._samplers["train"]
        elif dataset is self.eval_dataset:
            sampler = self._samplers["eval"]
        else:
            raise ValueError("no batch sampler for this dataset")
        rank, size = world()
        return sampler if size == 1 else RankSlices(sampler, rank, size)

    def get_train_dataloader(self) -> DataLoader[Any]:
        if world()[1] == 1:
            return super().get_train_dataloader()
        loader = self._build_dataloader(self.train_dataset, self.args.train_batch_size, dataset_kind="train")
        placed = self._placed(loader)
        self._train_dataloader = placed
        return placed

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader[Any]:
        if world()[1] == 1:
            return super().get_eval_dataloader(eval_dataset)
        loader = self._build_dataloader(eval_dataset or self.eval_dataset, self.args.eval_batch_size,
                                        dataset_kind="eval")
        return self._placed(loader)

    def _placed(self, loader: DataLoader[Any]) -> DataLoader[Any]:
        """Batches moved to this rank's device, without accelerate's own sharding (the sampler did it)."""
        placed = prepare_data_loader(loader, self.accelerator.device, num_processes=1, process_index=0)
        return cast("DataLoader[Any]", placed)


def pair_dataset(groups: list[ParallelGroup], pairs: list[tuple[int, str, str]], config: TrainConfig) -> Dataset:
    """Columns query and passage; with the anchor on, a label per row: [query anchored, passage anchored], a text
    being anchored when its language is one that monolingual batches use (`anchor_languages`)."""
    columns: dict[str, list[Any]] = {
        "query": [f"{config.query_prefix or ''}{groups[g].queries[q]}" for g, q, _ in pairs],
        "passage": [f"{config.passage_prefix or ''}{groups[g].passages[p]}" for g, _, p in pairs],
    }
    if config.anchor_distillation > 0:
        anchored = anchor_languages(groups)
        columns["label"] = [[float(q in anchored), float(p in anchored)] for _, q, p in pairs]
    return Dataset.from_dict(columns)


def anchor_languages(groups: list[ParallelGroup]) -> set[str]:
    """The languages the anchor keeps: those with monolingual pairs (QA data), where the base is to stay."""
    return {lang for group in groups for lang in group.mono_langs()}


def anchored_loss(model: SentenceTransformer, source_path: Path, config: TrainConfig, device: str) -> InfoNCELoss:
    """InfoNCE, with a frozen copy of the base as the anchor when config.anchor_distillation > 0."""
    anchor = None
    if config.anchor_distillation > 0:
        anchor = SentenceTransformer(str(source_path), device=device)
        anchor.max_seq_length = config.max_length
    return InfoNCELoss(model, scale=config.scale, anchor=anchor, anchor_weight=config.anchor_distillation)


def _half_precision(device: str) -> tuple[bool, bool]:
    """(bf16, fp16) for the trainer: mixed precision on GPU, bf16 where the GPU has it."""
    if not device.startswith("cuda"):
        return False, False
    bf16 = torch.cuda.is_bf16_supported()
    return bf16, not bf16


def mixing_record(sampler: HybridBatchSampler, groups: list[ParallelGroup], batches: int) -> dict[str, Any]:
    """Per dataset, over the batches the run will draw: its share, the cross-lingual pairs drawn and how many
    times that is its cross-lingual groups (a rare language's few hundred pairs, seen N times)."""
    if sampler.cross_shares is None:
        return {}
    drawn: dict[str, int] = {source: 0 for source in sampler.cross_shares}
    epoch, left = 0, batches
    while left > 0:
        plan_length = len(sampler.plan(epoch))
        if plan_length == 0:
            break
        found = sampler.composition(epoch, limit=min(left, plan_length))["cross_by_dataset"]
        assert isinstance(found, dict)
        for source, counts in found.items():
            drawn[source] += counts["pairs"]
        epoch, left = epoch + 1, left - plan_length
    sizes = {source: sum(1 for g in groups if g.source == source and g.cross_pairs()) for source in drawn}
    return {
        source: {"share": round(share, 4), "cross_groups": sizes[source], "cross_pairs_drawn": drawn[source],
                 "passes": round(drawn[source] / max(sizes[source], 1), 2)}
        for source, share in sampler.cross_shares.items()
    }


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose save finished; half-written ones (a worker killed mid-save) are removed.

    The trainer writes trainer_state.json last, so a checkpoint without it is incomplete.
    """
    complete: list[tuple[int, Path]] = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = path.name.rsplit("-", 1)[-1]
        if not step.isdigit():
            continue
        if (path / "trainer_state.json").is_file():
            complete.append((int(step), path))
        else:
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return max(complete)[1] if complete else None


def finetune(
    base: str | None,
    data: Path | list[Path],
    out: Path,
    config: TrainConfig | None = None,
    *,
    registry_dir: Path | None = None,
    version: str | None = None,
    parent_version: str | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    resume_from: Path | bool | None = None,
    logging_steps: int = 10,
    allow_folder: bool = True,
    dataset_names: list[str] | None = None,
) -> TrainResult:
    """Fine-tune `base` on `data` (parallel QA and/or bitext datasets); writes a model version folder at `out`.

    `base`: a registry version, folder or hub id; None = the default model (with its offline fallback). `allow_folder`
    False reads `base` only as a registry version or hub id, never as a local path (a client's name).

    `resume_from`: a checkpoint folder, or True for the newest under `out/checkpoints`.
    """
    config = config or TrainConfig()
    config.check()
    hf_logging.disable_progress_bar()  # progress goes through `progress`
    disable_progress_bars()
    groups, summary = load_training_data(data, with_context=config.with_context, names=dataset_names)
    check_strategy(groups, config.strategy, config.alpha)
    train_groups, val_groups = split(groups, config.val_fraction, config.seed)
    check_strategy(train_groups, config.strategy, config.alpha)
    if config.interpolate and not val_groups:
        raise ValueError(f"val_fraction {config.val_fraction} leaves no validation groups to choose a weight on")
    source = resolve_model(base, registry_dir, allow_folder=allow_folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        # Under torchrun each rank trains on its own GPU: the model and the anchor go there, not all to cuda:0.
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    layout = read_layout(source.path, source.name)
    query_prefix, passage_prefix = resolve_prefixes(config, layout)
    config = config.model_copy(update={"query_prefix": query_prefix, "passage_prefix": passage_prefix})

    model = SentenceTransformer(str(source.path), device=device)
    model.max_seq_length = config.max_length
    if config.freeze_embeddings:
        transformer = cast(PreTrainedModel, model[0].auto_model)
        transformer.get_input_embeddings().weight.requires_grad_(False)
    train_pairs = all_pairs(train_groups)
    samplers = {
        "train": make_sampler(config.strategy, train_groups, train_pairs, config.batch_size, config.alpha, config.seed,
                              cross_shares=config.mixing)
    }
    eval_dataset = None
    if val_groups:
        val_pairs = all_pairs(val_groups)
        # A fixed seed: every evaluation sees the same batches, so validation losses compare.
        # Validation batches mix by the split's own proportions: a small split may lack a dataset the shares name.
        samplers["eval"] = make_sampler(config.strategy, val_groups, val_pairs, config.batch_size, config.alpha, 12345)
        eval_dataset = pair_dataset(val_groups, val_pairs, config)

    max_steps = config.max_steps
    if config.bitext_passes is not None:
        batches = samplers["train"].steps_for_passes(config.bitext_passes)
        max_steps = math.ceil(batches / config.gradient_accumulation_steps)
        log.info("steps from passes over the bitext", extra={"passes": config.bitext_passes, "steps": max_steps})
    steps_per_epoch = math.ceil(len(samplers["train"]) / config.gradient_accumulation_steps)
    total_steps = max_steps or math.ceil(config.epochs * steps_per_epoch)
    warmup_steps = round(config.warmup_ratio * total_steps)
    mixing = mixing_record(samplers["train"], train_groups, total_steps * config.gradient_accumulation_steps)
    if mixing:
        log.info("data mixing over the run", extra={"mixing": mixing})
    checkpoints = out / "checkpoints"
    eval_steps = config.eval_steps or (config.checkpoint_steps if config.early_stopping_patience else None)
    save_steps = eval_steps if eval_steps and config.early_stopping_patience else config.checkpoint_steps
    bf16, fp16 = _half_precision(device)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=warmup_steps,
        num_train_epochs=config.epochs,
        max_steps=max_steps or -1,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        eval_strategy="steps" if eval_steps and eval_dataset is not None else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        load_best_model_at_end=bool(config.early_stopping_patience),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(logging_steps, total_steps // 10)),  # short runs still report a loss
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not device.startswith("cuda"),
        bf16=bf16,
        fp16=fp16,
    )
    reporter = _Reporter(config.batch_size, progress, should_cancel)
    callbacks: list[TrainerCallback] = [reporter]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _HybridTrainer(
        model=model,
        args=args,
        train_dataset=pair_dataset(train_groups, train_pairs, config),
        eval_dataset=eval_dataset,
        loss=anchored_loss(model, source.path, config, device),
        callbacks=callbacks,
        samplers=samplers,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not print()
    resume: str | None = None
    if resume_from is True:
        last = last_complete_checkpoint(checkpoints)
        resume = str(last) if last is not None else None
        if resume is None:
            log.warning("no complete checkpoint under %s; starting from the beginning", checkpoints)
    elif resume_from:
        resume = str(resume_from)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume)
    steps = trainer.state.global_step
    if reporter.cancelled:
        log.info("training cancelled", extra={"step": steps})
        return TrainResult(None, None, steps, cancelled=True)

    metrics: dict[str, float] = {
        "train_loss": float(output.training_loss),
        "steps": float(steps),
        "train_seconds": round(time.monotonic() - started, 2),
    }
    if reporter.last_loss is not None:
        metrics["final_logged_loss"] = reporter.last_loss
    if eval_dataset is not None:
        metrics["val_loss"] = float(trainer.evaluate()["eval_loss"])
    if not trainer.is_world_process_zero():
        return TrainResult(None, None, steps, cancelled=False, metrics=metrics)  # rank 0 writes the version

    version = version or version_from_name(out.name)
    model.prompts = {"query": query_prefix, "document": passage_prefix}
    model.save(str(out))
    manifest = Manifest(
        version=version,
        base_model=source.name,
        pooling=layout.pooling,
        normalize=True,
        query_prefix=query_prefix,
        passage_prefix=passage_prefix,
        max_length=config.max_length,
        training={
            **config.model_dump(),
            "device": device,
            "processes": world()[1],  # ranks that trained as one (torch.distributed), each on its own device
            "train_groups": len(train_groups),
            "val_groups": len(val_groups),
            "train_pairs": len(train_pairs),
            "dataset": summary.to_dict(),
            "batch_composition_epoch0": samplers["train"].composition(0),
            **({"mixing": mixing} if mixing else {}),
            "loss_curve": reporter.losses,
        },
        data_fingerprint=fingerprint(groups),
        metrics=metrics,
        parent_version=parent_version or (source.version if source.origin != "hub" else source.name),
    )
    write_manifest(out, manifest)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the version folder holds the final weights
    if config.interpolate:
        choice = interpolate_on_validation(
            source.path, out, val_groups, centering=config.centred_validation,
            weights=tuple(config.interpolation_weights), max_drop=config.guard_max_drop, device=device,
        )
        log.info("interpolated toward the base", extra={"weight": choice.weight, "objective": choice.objective})
        metrics["interpolation_weight"] = choice.weight
        manifest.training["interpolation"] = choice.to_dict()
        write_manifest(out, manifest)
    return TrainResult(out, version, steps, cancelled=False, metrics=metrics)
