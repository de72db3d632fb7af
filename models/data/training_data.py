"""Training data from several datasets at once: parallel QA and bitext, as one list of groups."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from xling.models.data.bitext import bitext_groups, is_bitext, load_bitext
from xling.models.data.parallel import DatasetSummary, ParallelGroup, load_parallel, summarize
from xling.models.data.text import DataError


def load_training_data(
    paths: Path | list[Path], with_context: bool = False
) -> tuple[list[ParallelGroup], DatasetSummary]:
    """Groups from one or more datasets, each parallel QA (LAReQA folder, JSONL groups) or bitext."""

    groups: list[ParallelGroup] = []
    skipped: Counter[str] = Counter()
    for path in [paths] if isinstance(paths, Path) else paths:
        if is_bitext(path):
            groups += bitext_groups(load_bitext(path))
        else:
            qa_groups, summary = load_parallel(path, with_context)
            groups += qa_groups
            skipped.update(summary.skipped)
    ids = Counter(g.id for g in groups)
    repeated = sorted(i for i, n in ids.items() if n > 1)
    if repeated:
        raise DataError(f"{len(repeated)} group ids appear in more than one dataset (e.g. {repeated[0]!r})")
    return groups, summarize(groups, dict(skipped))
