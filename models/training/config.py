"""A finetune run's hyper-parameters: plain data, the one declaration that the job contract (state/jobs.py), the
request schema, the CLI and experiments share. No torch or sentence-transformers here: the api validates a request
with it without loading the training stack (tests/test_layout.py checks that)."""

from __future__ import annotations

from dataclasses import dataclass, field

from xling.models.evaluation.guards import DEFAULT_MAX_DROP

STRATEGIES: tuple[str, ...] = ("monolingual", "crosslingual", "hybrid")
# WiSE-FT's candidate weights toward the tuned model (models/training/interpolate.py).
DEFAULT_WEIGHTS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults follow the hybrid-batch paper where it gives them."""

    strategy: str = "hybrid"
    alpha: float = 0.5
    batch_size: int = 100
    learning_rate: float = 3e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    # Instead of max_steps: as many steps as it takes to see each bitext dataset this many times (expected,
    # from alpha and the mixing shares; HybridBatchSampler.steps_for_passes). Suits a few hundred pairs.
    bitext_passes: float | None = None
    max_length: int = 128
    scale: float = 20.0
    # None: the base model's own prefixes when it declares any, else the paper's (PAPER_PREFIXES).
    # A string (even "") is explicit and wins over both.
    query_prefix: str | None = None
    passage_prefix: str | None = None
    # Keep the word-embedding matrix fixed: for a 250k-row vocabulary it is most of the parameters,
    # and the optimizer state and update it would need (see bench/RESULTS.md for what it saves).
    freeze_embeddings: bool = False
    with_context: bool = False
    val_fraction: float = 0.05
    eval_steps: int | None = None  # None: evaluate once, at the end
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_steps: int = 500
    gradient_accumulation_steps: int = 1
    seed: int = 0
    # WiSE-FT (models/training/interpolate.py): after training, move the weights back toward the base by the
    # weight that scores best on the validation split without a guarded metric falling by more than
    # guard_max_drop. Scored centred per language when centred_validation, as the service serves by default.
    interpolate: bool = False
    interpolation_weights: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHTS))
    guard_max_drop: float = DEFAULT_MAX_DROP
    centred_validation: bool = True
    # Share of cross-lingual batches per dataset name (samplers.py, "Data mixing"); None: proportional to each
    # dataset's cross-lingual groups. Only used when the data comes from several datasets.
    mixing: dict[str, float] | None = None
    # Weight of the anchor term (models/training/loss.py): texts in the languages of the monolingual batches are
    # pulled back toward a frozen copy of the base's embeddings, wherever they occur (a bitext's English side too,
    # when its code is the QA data's "en"), so tuning for new pairs keeps what the base did well. 0 = off.
    anchor_distillation: float = 0.0

    def validate(self) -> None:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if not 0 <= self.alpha <= 1:
            problems.append(f"alpha must be in [0, 1], got {self.alpha}")
        if self.batch_size < 2:
            problems.append("batch_size must be >= 2 (in-batch negatives need company)")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.gradient_accumulation_steps < 1:
            problems.append("gradient_accumulation_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.bitext_passes is not None and self.bitext_passes <= 0:
            problems.append("bitext_passes must be > 0")
        if self.bitext_passes is not None and self.max_steps is not None:
            problems.append("give max_steps or bitext_passes, not both")
        if self.max_steps is None and self.epochs <= 0:
            problems.append("epochs must be > 0")
        if not 8 <= self.max_length <= 8192:
            problems.append("max_length must be in [8, 8192]")
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            problems.append("early stopping needs a validation split (val_fraction > 0)")
        if self.interpolate and self.val_fraction == 0:
            problems.append("interpolation chooses its weight on a validation split (val_fraction > 0)")
        if not self.interpolation_weights or any(not 0 < w <= 1 for w in self.interpolation_weights):
            problems.append(f"interpolation_weights must be in (0, 1], got {self.interpolation_weights}")
        if self.guard_max_drop < 0:
            problems.append("guard_max_drop must be >= 0")
        if self.anchor_distillation < 0:
            problems.append("anchor_distillation must be >= 0")
        no_monolingual_batches = self.strategy == "crosslingual" or (self.strategy == "hybrid" and self.alpha == 0)
        if self.anchor_distillation > 0 and no_monolingual_batches:
            problems.append("anchor_distillation anchors the monolingual batches' texts: this run has none")
        if problems:
            raise ValueError("; ".join(problems))
