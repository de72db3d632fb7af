"""An adapter run's hyper-parameters: plain data, importable by the api to validate a request (no torch, no peft)."""

from __future__ import annotations

from dataclasses import field

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass


# A pydantic dataclass: the finetune request takes it as it is (unknown keys and non-finite numbers refused), and
# it stays a dataclass.
@dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class AdapterConfig:
    """Hyper-parameters of one language's adapter; the defaults are the ones measured in bench/RESULTS.md."""

    rank: int = 32
    lora_alpha: int = 32
    # XLM-R's attention projections and every dense layer (attention output, intermediate, output).
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    learning_rate: float = 1.5e-3
    batch_size: int = 32
    max_steps: int = 400
    max_seconds: float | None = 840.0  # wall-time budget per language; the best step so far is kept
    scale: float = 20.0
    distillation: float = 1.0  # weight of the squared distance to the own target; 0 = InfoNCE alone
    symmetric: bool = False  # also each translation against the batch's sentences (the other retrieval direction)
    val_fraction: float = 0.1
    eval_steps: int = 25
    early_stopping_patience: int | None = 4  # evaluations without improvement before stopping
    max_length: int = 128
    seed: int = 0

    def validate(self) -> None:
        problems = []
        if not 1 <= self.rank <= 256:
            problems.append(f"rank must be in [1, 256], got {self.rank}")
        if self.lora_alpha < 1:
            problems.append("lora_alpha must be >= 1")
        if not self.target_modules:
            problems.append("target_modules must name at least one module")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.batch_size < 2:
            problems.append("batch_size must be >= 2")
        if self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.max_seconds is not None and self.max_seconds <= 0:
            problems.append("max_seconds must be > 0")
        if self.distillation < 0:
            problems.append("distillation must be >= 0")
        if not 0 < self.val_fraction < 0.5:
            problems.append(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.eval_steps < 1:
            problems.append("eval_steps must be >= 1")
        if not 8 <= self.max_length <= 512:
            problems.append("max_length must be in [8, 512]")
        if problems:
            raise ValueError("; ".join(problems))
