"""`deploy: if_better`: is the candidate better than the serving model on `compare_on`, and did it keep every
guarded metric? Both models are scored as they would be served (centred when the service centres)."""

from __future__ import annotations

from typing import Any

from xling.models.evaluation.evaluate import EvaluationReport
from xling.models.evaluation.guards import DEFAULT_MAX_DROP, Guard, all_passed, check_guards, default_guards


def deploy_decision(
    candidate: EvaluationReport,
    active: EvaluationReport,
    compare_on: str | None,
    guards: list[Guard] | None,
    *,
    centred: bool,
    max_drop: float = DEFAULT_MAX_DROP,
) -> dict[str, Any]:
    """The decision report: the compared metric with both values, each guard with both values, and why.

    `guards` None: the defaults (Mono mAP of every LAReQA set, accuracy@1 of every bitext set, each allowed to
    fall by `max_drop`); an empty list: no guards."""
    metric, candidate_score = candidate.score(compare_on, centred)
    _, active_score = active.score(compare_on, centred)
    candidate_metrics, active_metrics = candidate.flat_metrics(centred), active.flat_metrics(centred)
    chosen = default_guards(candidate_metrics, max_drop) if guards is None else guards
    checks = check_guards(chosen, active_metrics, candidate_metrics)
    better = candidate_score > active_score
    broken = [c for c in checks if not c.passed]
    what = f"{metric} on {compare_on or 'the LAReQA eval sets (mean)'}"
    if not better:
        reason = f"not better on {what}: {candidate_score:.4f} vs {active_score:.4f}"
    elif broken:
        reason = "better on {}, but a guard fell: {}".format(
            what, "; ".join(f"{c.metric} {c.baseline:.4f} -> {c.candidate:.4f} (bound {c.max_drop:g})" for c in broken)
        )
    else:
        reason = f"better on {what} ({candidate_score:.4f} vs {active_score:.4f}) and every guard kept"
    return {
        "metric": metric,
        "compare_on": compare_on or "LAReQA eval sets (mean)",
        "centred": centred,
        "candidate": candidate_score,
        "active": active_score,
        "guards": [c.to_dict() for c in checks],
        "deployed": better and all_passed(checks),
        "reason": reason,
    }
