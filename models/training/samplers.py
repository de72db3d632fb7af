"""Batch samplers for hybrid batch training (arXiv 2408.10536): X-X-mono, X-Y and hybrid batches.

A sampler yields lists of row indices into `pairs` (see `models.data.all_pairs`): each row is one
(group, query language, passage language) training pair.

Guarantees, for every epoch:
- each group the strategy can use appears in exactly one batch, so a group is never twice in a batch
  and a passage's own translation is never an in-batch negative;
- a monolingual batch has one language L for every query and passage. L is drawn uniformly among
  the languages that can still fill a whole batch with unused groups (or, near the end of an epoch,
  among those with any unused group left; that batch may be smaller);
- a cross-lingual batch gives each group a (query language, passage language) pair drawn uniformly
  among its pairs with the two different;
- a hybrid batch is monolingual with probability alpha, else cross-lingual (when one kind has no
  unused groups left, the other is used);
- the batches depend only on (seed, epoch): same seed, same batches; a new epoch, a new order.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from torch.utils.data import BatchSampler

from xling.models.data.parallel import ParallelGroup

log = logging.getLogger(__name__)

Strategy = Literal["monolingual", "crosslingual", "hybrid"]
STRATEGIES: tuple[str, ...] = ("monolingual", "crosslingual", "hybrid")


@dataclass(frozen=True)
class PlannedBatch:
    kind: Literal["mono", "cross"]
    rows: list[int]


class HybridBatchSampler(BatchSampler):
    def __init__(
        self,
        groups: list[ParallelGroup],
        pairs: list[tuple[int, str, str]],
        batch_size: int,
        alpha: float = 0.5,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # BatchSampler's own state is unused: batches come from the plan below.
        super().__init__(range(len(pairs)), batch_size, drop_last)
        self.groups = groups
        self.alpha = alpha
        self.seed = seed
        self.epoch = 0
        self._pairs = pairs
        self._row_of = {pair: row for row, pair in enumerate(pairs)}
        self._mono_langs = [g.mono_langs() for g in groups]
        self._cross_pairs = [g.cross_pairs() for g in groups]
        self._languages = sorted({lang for langs in self._mono_langs for lang in langs})
        self._plans: dict[int, list[PlannedBatch]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each epoch; the batches are reseeded from it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.plan(self.epoch)
        log.info("sampler epoch plan", extra={"epoch": self.epoch, **self.composition(self.epoch)})
        for batch in plan:
            yield batch.rows

    def composition(self, epoch: int) -> dict[str, object]:
        """Batch counts by kind and training pairs by language pair, for logs and manifests."""
        plan = self.plan(epoch)
        pairs: Counter[str] = Counter()
        for batch in plan:
            for row in batch.rows:
                _, q, p = self._pairs[row]
                pairs[f"{q}->{p}"] += 1
        return {
            "mono_batches": sum(b.kind == "mono" for b in plan),
            "cross_batches": sum(b.kind == "cross" for b in plan),
            "language_pairs": dict(sorted(pairs.items())),
        }

    def plan(self, epoch: int) -> list[PlannedBatch]:
        if epoch not in self._plans:
            self._plans = {epoch: self._make_plan(epoch)}  # keep one epoch: plans can be large
        return self._plans[epoch]

    def _make_plan(self, epoch: int) -> list[PlannedBatch]:
        rng = random.Random(f"{self.seed}/{epoch}")
        mono_ok, cross_ok = self.alpha > 0, self.alpha < 1
        order = list(range(len(self.groups)))
        rng.shuffle(order)
        eligible = [g for g in order if (mono_ok and self._mono_langs[g]) or (cross_ok and self._cross_pairs[g])]
        used = [False] * len(self.groups)
        mono_queue = {lang: [g for g in eligible if lang in self._mono_langs[g]] for lang in self._languages}
        mono_left = {lang: len(queue) for lang, queue in mono_queue.items()} if mono_ok else {}
        cross_queue = [g for g in eligible if self._cross_pairs[g]] if cross_ok else []
        cross_left = len(cross_queue)
        cursor: Counter[str] = Counter()  # per queue: position of the next candidate
        remaining = len(eligible)
        plan: list[PlannedBatch] = []

        def take(queue_name: str, queue: list[int]) -> list[int]:
            taken: list[int] = []
            while len(taken) < self.batch_size and cursor[queue_name] < len(queue):
                g = queue[cursor[queue_name]]
                cursor[queue_name] += 1
                if not used[g]:
                    taken.append(g)
            return taken

        while remaining:
            # Always draw the coin, so the stream of random numbers does not depend on alpha's value.
            mono = rng.random() < self.alpha
            can_mono = any(n > 0 for n in mono_left.values())
            if mono and not can_mono or not mono and cross_left == 0:
                mono = not mono
            if mono:
                full = [lang for lang, n in mono_left.items() if n >= self.batch_size]
                lang = rng.choice(full or [lang for lang, n in mono_left.items() if n > 0])
                chosen = take(f"mono:{lang}", mono_queue[lang])
                rows = [self._row_of[(g, lang, lang)] for g in chosen]
            else:
                chosen = take("cross", cross_queue)
                rows = [self._row_of[(g, *rng.choice(self._cross_pairs[g]))] for g in chosen]
            for g in chosen:
                used[g] = True
                for lang in self._mono_langs[g]:
                    if lang in mono_left:
                        mono_left[lang] -= 1
                if cross_ok and self._cross_pairs[g]:
                    cross_left -= 1
            remaining -= len(chosen)
            if len(rows) == self.batch_size or not self.drop_last:
                plan.append(PlannedBatch("mono" if mono else "cross", rows))
        return plan


def make_sampler(
    strategy: str,
    groups: list[ParallelGroup],
    pairs: list[tuple[int, str, str]],
    batch_size: int,
    alpha: float = 0.5,
    seed: int = 0,
    drop_last: bool = False,
) -> HybridBatchSampler:
    """monolingual = hybrid with alpha 1 (X-X-mono), crosslingual = alpha 0 (X-Y), hybrid = the given alpha."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    effective = {"monolingual": 1.0, "crosslingual": 0.0}.get(strategy, alpha)
    return HybridBatchSampler(groups, pairs, batch_size, alpha=effective, seed=seed, drop_last=drop_last)
