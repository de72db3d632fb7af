"""Guards: metrics a new model must not lose, checked against the model it would replace.

A deploy decision (and the choice of an interpolation weight) compares one metric, `compare_on`. A candidate can
win there and lose elsewhere: tuned on a rare language, a model gains that language and gives up monolingual
retrieval everywhere (bench/RESULTS.md). A guard names a metric, `<set>:<metric>`, and how far it may fall.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MAX_DROP = 0.005
LOWER_IS_BETTER = {"rank_distance"}
GUARDED_BY_DEFAULT = ("mono_map", "bitext_acc@1")
LAREQA_METRICS = ("mono_map", "cross_map", "multi_map", "rank_distance")  # what a guard may name, per set kind
BITEXT_METRICS = ("bitext_acc@1",)  # Mono mAP of every LAReQA set, accuracy of every bitext set


@dataclass(frozen=True)
class Guard:
    metric: str  # "<set>:<metric>", as in flat_metrics
    max_drop: float = DEFAULT_MAX_DROP


@dataclass(frozen=True)
class GuardCheck:
    metric: str
    baseline: float
    candidate: float
    max_drop: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_guards(metric_names: Iterable[str], max_drop: float = DEFAULT_MAX_DROP) -> list[Guard]:
    """A guard on every metric whose name ends in one of GUARDED_BY_DEFAULT."""
    return [Guard(name, max_drop) for name in sorted(metric_names) if name.rsplit(":", 1)[-1] in GUARDED_BY_DEFAULT]


def check_guards(guards: list[Guard], baseline: dict[str, float], candidate: dict[str, float]) -> list[GuardCheck]:
    """Each guard with both values. A guard on a metric that either side lacks is an error, not a pass."""
    missing = sorted({g.metric for g in guards} - (baseline.keys() & candidate.keys()))
    if missing:
        raise ValueError(f"guarded metrics not measured on both models: {', '.join(missing)}")
    checks = []
    for guard in guards:
        before, after = baseline[guard.metric], candidate[guard.metric]
        loss = after - before if guard.metric.rsplit(":", 1)[-1] in LOWER_IS_BETTER else before - after
        checks.append(GuardCheck(guard.metric, before, after, guard.max_drop, passed=loss <= guard.max_drop + 1e-12))
    return checks


def all_passed(checks: list[GuardCheck]) -> bool:
    return all(check.passed for check in checks)
