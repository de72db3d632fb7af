"""A finetune run's hyper-parameters: the one declaration of them, with their bounds and descriptions. The job
contract (state/jobs.py) carries it, the finetune request inherits its fields (app/schemas.py), the CLI and
experiments build it. No torch or sentence-transformers here: the api validates a request with it without loading
the training stack (tests/test_layout.py checks that)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xling.models.evaluation.guards import DEFAULT_MAX_DROP

Strategy = Literal["monolingual", "crosslingual", "hybrid"]
STRATEGIES: tuple[str, ...] = ("monolingual", "crosslingual", "hybrid")
# WiSE-FT's candidate weights toward the tuned model (models/training/interpolate.py).
DEFAULT_WEIGHTS = (0.2, 0.4, 0.6, 0.8, 1.0)
Prefix = Annotated[str, Field(max_length=64)]


class TrainConfig(BaseModel):
    """Hyper-parameters; defaults follow the hybrid-batch paper where it gives them. Checked when built: each
    field's bounds, then the rules between fields."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field("hybrid", description="monolingual (X-X-mono) | crosslingual (X-Y) | hybrid")
    alpha: float = Field(0.5, ge=0, le=1, description="hybrid: probability that a batch is monolingual")
    batch_size: int = Field(100, ge=2, le=4096, description="in-batch negatives need company")
    learning_rate: float = Field(3e-5, gt=0, lt=1, description="AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    epochs: float = Field(1.0, gt=0, le=100)
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="stop after this many steps (overrides"
                                  " epochs)")
    # Instead of max_steps: as many steps as it takes to see each bitext dataset this many times (expected,
    # from alpha and the mixing shares; HybridBatchSampler.steps_for_passes). Suits a few hundred pairs.
    bitext_passes: float | None = Field(
        None, gt=0, le=10_000, description="instead of max_steps: as many steps as it takes to see each bitext"
        " training dataset this many times (from alpha and the mixing shares)",
    )
    max_length: int = Field(128, ge=8, le=8192, description="max tokens per text")
    scale: float = Field(20.0, gt=0, le=1_000, description="InfoNCE scale (1/temperature)")
    # None: the base model's own prefixes when it declares any, else the paper's (PAPER_PREFIXES).
    # A string (even "") is explicit and wins over both.
    query_prefix: Prefix | None = Field(None, description="default: the base's own, else 'Query: '")
    passage_prefix: Prefix | None = Field(None, description="default: the base's own, else 'Passage: '")
    # For a 250k-row vocabulary the embedding matrix is most of the parameters, and of the optimizer state and
    # update it would need (see bench/RESULTS.md for what it saves).
    freeze_embeddings: bool = Field(False, description="keep the word-embedding matrix fixed")
    with_context: bool = Field(False, description="LAReQA: passage = answer sentence + its paragraph")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of training groups held out for validation")
    eval_steps: int | None = Field(None, ge=1, description="validate every this many steps (None: once, at the end)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many validation evaluations without improvement (needs eval_steps)"
    )
    checkpoint_steps: int = Field(500, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1, description="effective batch = batch_size x this")
    seed: int = 0
    # WiSE-FT (models/training/interpolate.py): after training, move the weights back toward the base by the
    # weight that scores best on the validation split without a guarded metric falling by more than
    # guard_max_drop. Scored centred per language when centred_validation, as the service serves by default.
    interpolate: bool = Field(
        False, description="WiSE-FT: move the tuned weights back toward the base by the weight that scores best on"
        " the validation split without its Mono mAP falling by more than guard_max_drop",
    )
    interpolation_weights: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: list(DEFAULT_WEIGHTS), min_length=1, max_length=20,
        description="weights on the tuned model to try",
    )
    guard_max_drop: float = Field(DEFAULT_MAX_DROP, ge=0, le=1, description="the default guards' bound")
    centred_validation: bool = Field(True, description="score validation centred per language, as served")
    # Share of cross-lingual batches per dataset name (samplers.py, "Data mixing"); None: proportional to each
    # dataset's cross-lingual groups. Only used when the data comes from several datasets.
    mixing: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        None, description="share of cross-lingual batches per training dataset, e.g. {\"mlqa\": 0.5, \"bre\": 0.5};"
        " default: proportional to each dataset's cross-lingual pairs",
    )
    # Weight of the anchor term (models/training/loss.py): texts in the languages of the monolingual batches are
    # pulled back toward a frozen copy of the base's embeddings, wherever they occur (a bitext's English side too,
    # when its code is the QA data's "en"), so tuning for new pairs keeps what the base did well. 0 = off.
    anchor_distillation: float = Field(
        0.0, ge=0, le=100, description="weight of a term that keeps texts in the monolingual batches' languages"
        " (a bitext's side in one of them too) where the base embedded them (1 - cosine to a frozen copy of the"
        " base), so tuning keeps what the base did well; needs monolingual batches; 0 = off",
    )

    @model_validator(mode="after")
    def _rules_between_fields(self) -> TrainConfig:
        problems = []
        if self.bitext_passes is not None and self.max_steps is not None:
            problems.append("give max_steps or bitext_passes, not both")
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            problems.append("early stopping needs a validation split (val_fraction > 0)")
        if self.interpolate and self.val_fraction == 0:
            problems.append("interpolation chooses its weight on a validation split (val_fraction > 0)")
        no_monolingual_batches = self.strategy == "crosslingual" or (self.strategy == "hybrid" and self.alpha == 0)
        if self.anchor_distillation > 0 and no_monolingual_batches:
            problems.append("anchor_distillation anchors the monolingual batches' texts: this run has none")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def check(self) -> None:
        """Raise ValueError if the config breaks a rule (after a change that skipped validation: model_copy)."""
        train_config(**self.model_dump())


def train_config(**values: Any) -> TrainConfig:
    """A TrainConfig, or ValueError saying in one line what is wrong with each field (for the CLI and the job
    runner, where pydantic's report would be noise)."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" if error["loc"]
        else error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )
