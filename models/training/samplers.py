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

Data mixing, when the groups come from several datasets (or `cross_shares` is given): a cross-lingual batch is
drawn from one dataset, chosen with probability equal to its share (default: proportional to its cross-lingual
groups), and each dataset's groups cycle on their own, reshuffled at each pass, so a small dataset (a rare
language's few hundred pairs) is seen as often as its share says, and a group used in a monolingual batch can
still appear in a cross-lingual one. An epoch then has as many batches as one pass over the groups would.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from torch.utils.data import BatchSampler

from xling.models.data.parallel import ParallelGroup
from xling.models.training.config import STRATEGIES

log = logging.getLogger(__name__)

Strategy = Literal["monolingual", "crosslingual", "hybrid"]


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
        cross_shares: dict[str, float] | None = None,
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
        self.cross_shares = _resolve_shares(groups, self._cross_pairs, cross_shares)

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

    def composition(self, epoch: int, limit: int | None = None) -> dict[str, object]:
        """Batch counts by kind, training pairs by language pair and, when mixing, cross-lingual batches and
        pairs by dataset; of the epoch's plan, or of its first `limit` batches (a run that stops early)."""
        plan = self.plan(epoch)[:limit]
        pairs: Counter[str] = Counter()
        by_source: Counter[str] = Counter()
        pairs_by_source: Counter[str] = Counter()
        for batch in plan:
            for row in batch.rows:
                group, q, p = self._pairs[row]
                pairs[f"{q}->{p}"] += 1
                if batch.kind == "cross":
                    pairs_by_source[self.groups[group].source] += 1
            if batch.kind == "cross" and batch.rows:
                by_source[self.groups[self._pairs[batch.rows[0]][0]].source] += 1
        found: dict[str, object] = {
            "mono_batches": sum(b.kind == "mono" for b in plan),
            "cross_batches": sum(b.kind == "cross" for b in plan),
            "language_pairs": dict(sorted(pairs.items())),
        }
        if self.cross_shares is not None:
            found["cross_by_dataset"] = {
                source: {"share": share, "batches": by_source[source], "pairs": pairs_by_source[source]}
                for source, share in self.cross_shares.items()
            }
        return found

    def steps_for_passes(self, passes: float) -> int:
        """Batches after which each bitext dataset (groups that are translations only) is expected to have been
        seen `passes` times: the slowest one sets the number. A batch is cross-lingual with probability 1 − alpha
        and, when mixing, from dataset s with probability share(s); each such batch holds min(batch, |s|) of s."""
        if passes <= 0:
            raise ValueError(f"passes must be > 0, got {passes}")
        sizes = Counter(g.source for g in self.groups if g.cross_only)
        if not sizes:
            raise ValueError("counting passes over bitext needs a bitext dataset in the training data")
        if self.alpha >= 1:
            raise ValueError("monolingual batches never draw bitext: passes over it cannot be counted")
        shares = self.cross_shares
        if shares is None:
            # Plain plan: cross-lingual batches come from one queue over every cross-lingual group.
            everyone = sum(1 for pairs in self._cross_pairs if pairs)
            shares = {source: n / everyone for source, n in sizes.items()}
        needed = [
            passes * n / ((1 - self.alpha) * shares[source] * min(self.batch_size, n))
            for source, n in sizes.items() if shares.get(source, 0) > 0
        ]
        if not needed:
            raise ValueError("mixing gives every bitext dataset a share of 0: passes over it cannot be counted")
        return math.ceil(max(needed))

    def plan(self, epoch: int) -> list[PlannedBatch]:
        if epoch not in self._plans:
            self._plans = {epoch: self._make_plan(epoch)}  # keep one epoch: plans can be large
        return self._plans[epoch]

    def _make_plan(self, epoch: int) -> list[PlannedBatch]:
        if self.cross_shares is not None:
            return self._make_mixed_plan(epoch)
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

    def _make_mixed_plan(self, epoch: int) -> list[PlannedBatch]:
        """Monolingual batches as in the plain plan (each group at most once per epoch); cross-lingual batches
        from one dataset each, chosen by share, each dataset cycling through its own groups."""
        assert self.cross_shares is not None
        rng = random.Random(f"{self.seed}/{epoch}/mixed")
        order = list(range(len(self.groups)))
        rng.shuffle(order)
        mono_ok, cross_ok = self.alpha > 0, self.alpha < 1
        used_mono = [False] * len(self.groups)
        mono_queue = {lang: [g for g in order if lang in self._mono_langs[g]] for lang in self._languages}
        mono_left = {lang: len(queue) for lang, queue in mono_queue.items()} if mono_ok else {}
        cursor: Counter[str] = Counter()
        sources = [s for s, share in self.cross_shares.items() if share > 0] if cross_ok else []
        cross_groups = {s: [g for g in order if self._cross_pairs[g] and self.groups[g].source == s] for s in sources}
        cycles = {s: _Cycle(groups, rng) for s, groups in cross_groups.items()}
        eligible = {g for g in order if (mono_ok and self._mono_langs[g]) or (cross_ok and self._cross_pairs[g])}
        plan: list[PlannedBatch] = []
        for _ in range(math.ceil(len(eligible) / self.batch_size)):
            mono = rng.random() < self.alpha
            can_mono = any(n > 0 for n in mono_left.values())
            if mono and not can_mono:
                mono = False
            elif not mono and not sources:
                mono = True
            if (mono and not can_mono) or (not mono and not sources):
                break  # nothing left to draw from in this epoch
            if mono:
                full = [lang for lang, n in mono_left.items() if n >= self.batch_size]
                lang = rng.choice(full or [lang for lang, n in mono_left.items() if n > 0])
                chosen: list[int] = []
                queue = mono_queue[lang]
                while len(chosen) < self.batch_size and cursor[lang] < len(queue):
                    g = queue[cursor[lang]]
                    cursor[lang] += 1
                    if not used_mono[g]:
                        chosen.append(g)
                for g in chosen:
                    used_mono[g] = True
                    for other in self._mono_langs[g]:
                        mono_left[other] -= 1
                rows = [self._row_of[(g, lang, lang)] for g in chosen]
            else:
                source = rng.choices(sources, weights=[self.cross_shares[s] for s in sources])[0]
                chosen = cycles[source].take(self.batch_size)
                rows = [self._row_of[(g, *rng.choice(self._cross_pairs[g]))] for g in chosen]
            if len(rows) == self.batch_size or not self.drop_last:
                plan.append(PlannedBatch("mono" if mono else "cross", rows))
        return plan


class _Cycle:
    """One dataset's cross-lingual groups, handed out in a shuffled order; a new order at each pass."""

    def __init__(self, groups: list[int], rng: random.Random) -> None:
        self.groups, self.rng = groups, rng
        self.queue: list[int] = []
        self.passes = 0

    def take(self, n: int) -> list[int]:
        """Up to n distinct groups (fewer only when the dataset has fewer)."""
        taken: list[int] = []
        while len(taken) < min(n, len(self.groups)):
            if not self.queue:
                self.queue = self.rng.sample(self.groups, len(self.groups))
                self.passes += 1
            g = self.queue.pop()
            if g in taken:  # a pass ended inside this batch: the next pass's order may repeat a group
                self.queue.insert(0, g)
                continue
            taken.append(g)
        return taken


def _resolve_shares(
    groups: list[ParallelGroup], cross_pairs: list[list[tuple[str, str]]], shares: dict[str, float] | None
) -> dict[str, float] | None:
    """Normalised cross-lingual shares per dataset, or None for the plain plan (one dataset, no shares given).
    Default: proportional to each dataset's groups with a cross-lingual pair."""
    counts = Counter(g.source for g, pairs in zip(groups, cross_pairs, strict=True) if pairs)
    if shares is None:
        if len({g.source for g in groups}) < 2 or not counts:
            return None
        shares = {source: float(n) for source, n in counts.items()}
    unknown = sorted(set(shares) - {g.source for g in groups})
    if unknown:
        raise ValueError(f"mixing names datasets not in the training data: {unknown}")
    if any(value < 0 for value in shares.values()) or not any(shares.get(s, 0) > 0 for s in counts):
        raise ValueError(f"mixing shares must be >= 0, with one > 0 for a dataset with cross-lingual pairs: {shares}")
    total = sum(shares.get(s, 0.0) for s in counts)
    return {source: shares.get(source, 0.0) / total for source in sorted(counts)}


def make_sampler(
    strategy: str,
    groups: list[ParallelGroup],
    pairs: list[tuple[int, str, str]],
    batch_size: int,
    alpha: float = 0.5,
    seed: int = 0,
    drop_last: bool = False,
    cross_shares: dict[str, float] | None = None,
) -> HybridBatchSampler:
    """monolingual = hybrid with alpha 1 (X-X-mono), crosslingual = alpha 0 (X-Y), hybrid = the given alpha."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    effective = {"monolingual": 1.0, "crosslingual": 0.0}.get(strategy, alpha)
    return HybridBatchSampler(groups, pairs, batch_size, alpha=effective, seed=seed, drop_last=drop_last,
                              cross_shares=cross_shares)


class RankSlices(BatchSampler):
    """One rank's part of each global batch of `sampler` (several processes training as one, torch.distributed):
    rank r takes the r-th of `world` contiguous, near-equal slices. Every rank builds the same sampler with the
    same seed, so the ranks split the same batch: a monolingual batch is one language on every rank, and a
    cross-lingual batch's pairs are divided among them. A batch with fewer rows than ranks is skipped (every
    rank needs a row; at most a partial last batch is affected)."""

    def __init__(self, sampler: HybridBatchSampler, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        if sampler.batch_size < world:
            raise ValueError(f"a global batch of {sampler.batch_size} cannot be split over {world} processes")
        super().__init__(range(0), sampler.batch_size // world, False)
        self.global_batches = sampler
        self.rank = rank
        self.world = world

    def set_epoch(self, epoch: int) -> None:
        self.global_batches.set_epoch(epoch)

    def _slice(self, rows: list[int]) -> list[int]:
        base, extra = divmod(len(rows), self.world)
        start = self.rank * base + min(self.rank, extra)
        return rows[start : start + base + (1 if self.rank < extra else 0)]

    def __len__(self) -> int:
        return sum(1 for batch in self.global_batches.plan(self.global_batches.epoch) if len(batch.rows) >= self.world)

    def __iter__(self) -> Iterator[list[int]]:
        for rows in self.global_batches:
            if len(rows) >= self.world:
                yield self._slice(rows)
