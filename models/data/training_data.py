"""Training data from several datasets at once: parallel QA and bitext, as one list of groups."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from xling.models.data.bitext import bitext_groups, is_bitext, load_bitext
from xling.models.data.parallel import DatasetSummary, ParallelGroup, load_parallel, summarize
from xling.models.data.text import DataError


def source_name(path: Path) -> str:
    """A dataset's name when none is given: its file or folder name, without `.jsonl`."""
    return path.name.removesuffix(".jsonl")


def load_training_data(
    paths: Path | list[Path], with_context: bool = False, names: list[str] | None = None
) -> tuple[list[ParallelGroup], DatasetSummary]:
    """Groups from one or more datasets, each parallel QA (LAReQA folder, JSONL groups) or bitext; each group
    remembers its dataset (`names`, default `source_name` of each path)."""
    path_list = [paths] if isinstance(paths, Path) else list(paths)
    labels = names or [source_name(path) for path in path_list]
    if len(labels) != len(path_list) or len(set(labels)) != len(labels):
        raise DataError(f"datasets need one distinct name each, got {labels}")
    groups: list[ParallelGroup] = []
    skipped: Counter[str] = Counter()
    for path, label in zip(path_list, labels, strict=True):
        if is_bitext(path):
            loaded = bitext_groups(load_bitext(path))
        else:
            loaded, summary = load_parallel(path, with_context)
            skipped.update(summary.skipped)
        for group in loaded:
            group.source = label
        groups += loaded
    ids = Counter(g.id for g in groups)
    repeated = sorted(i for i, n in ids.items() if n > 1)
    if repeated:
        raise DataError(f"{len(repeated)} group ids appear in more than one dataset (e.g. {repeated[0]!r})")
    return groups, summarize(groups, dict(skipped))
