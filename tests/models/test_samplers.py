"""Sampler properties over random datasets (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from xling.models.data.parallel import ParallelGroup, all_pairs
from xling.models.training.samplers import HybridBatchSampler, make_sampler

LANGS = ["en", "de", "fr", "es", "zh"]


@st.composite
def datasets(draw: st.DrawFn) -> list[ParallelGroup]:
    count = draw(st.integers(min_value=2, max_value=60))
    groups = []
    for i in range(count):
        langs = draw(st.lists(st.sampled_from(LANGS), min_size=1, max_size=5, unique=True))
        extra_passages = draw(st.lists(st.sampled_from(LANGS), max_size=2, unique=True))
        groups.append(
            ParallelGroup(
                f"g{i}",
                {lang: f"q{i}{lang}" for lang in langs},
                {lang: f"p{i}{lang}" for lang in {*langs, *extra_passages}},
            )
        )
    return groups


def sampler(
    groups: list[ParallelGroup], strategy: str, batch: int, alpha: float = 0.5, seed: int = 0
) -> HybridBatchSampler:
    return make_sampler(strategy, groups, all_pairs(groups), batch, alpha, seed)


def decoded(s: HybridBatchSampler, groups: list[ParallelGroup]) -> list[list[tuple[int, str, str]]]:
    pairs = all_pairs(groups)
    return [[pairs[row] for row in rows] for rows in s]


@settings(max_examples=60, deadline=None)
@given(datasets(), st.sampled_from(["monolingual", "crosslingual", "hybrid"]), st.integers(1, 12), st.integers(0, 3))
def test_every_batch_obeys_its_strategy(groups: list[ParallelGroup], strategy: str, batch: int, epoch: int) -> None:
    s = sampler(groups, strategy, batch)
    s.set_epoch(epoch)
    batches = decoded(s, groups)
    assert len(batches) == len(s)  # an honest __len__
    for rows, planned in zip(batches, s.plan(epoch), strict=True):
        group_ids = [g for g, _, _ in rows]
        assert len(group_ids) == len(set(group_ids)), "a group twice in one batch"
        assert 1 <= len(rows) <= batch
        for g, q, p in rows:
            assert q in groups[g].queries and p in groups[g].passages
        if planned.kind == "mono":
            assert len({q for _, q, _ in rows} | {p for _, _, p in rows}) == 1, "mono batch mixes languages"
        else:
            assert all(q != p for _, q, p in rows), "cross batch holds a same-language pair"
    kinds = {b.kind for b in s.plan(epoch)}
    if strategy == "monolingual":
        assert kinds <= {"mono"}
    if strategy == "crosslingual":
        assert kinds <= {"cross"}


@settings(max_examples=60, deadline=None)
@given(datasets(), st.sampled_from(["monolingual", "crosslingual", "hybrid"]), st.integers(1, 12))
def test_every_usable_group_once_per_epoch(groups: list[ParallelGroup], strategy: str, batch: int) -> None:
    s = sampler(groups, strategy, batch)
    for epoch in range(3):
        s.set_epoch(epoch)
        used = sorted(g for rows in decoded(s, groups) for g, _, _ in rows)
        usable = sorted(
            i
            for i, group in enumerate(groups)
            if (strategy != "crosslingual" and group.mono_langs())
            or (strategy != "monolingual" and group.cross_pairs())
        )
        assert used == usable


@settings(max_examples=30, deadline=None)
@given(datasets(), st.integers(1, 8), st.integers(0, 1000))
def test_same_seed_same_batches_new_epoch_new_order(groups: list[ParallelGroup], batch: int, seed: int) -> None:
    first = sampler(groups, "hybrid", batch, seed=seed)
    second = sampler(groups, "hybrid", batch, seed=seed)
    assert list(first) == list(second)
    first.set_epoch(1)
    second.set_epoch(1)
    assert list(first) == list(second)


def test_a_new_epoch_reorders() -> None:
    groups = [ParallelGroup(f"g{i}", {"en": "q", "de": "q"}, {"en": "p", "de": "p"}) for i in range(50)]
    s = sampler(groups, "hybrid", 8, seed=3)
    epoch0 = list(s)
    s.set_epoch(1)
    assert list(s) != epoch0
    assert sorted(map(sorted, epoch0)) != sorted(map(sorted, list(s)))


def test_hybrid_monolingual_fraction_matches_alpha() -> None:
    groups = [ParallelGroup(f"g{i}", {lang: "q" for lang in LANGS}, {lang: "p" for lang in LANGS}) for i in range(400)]
    for alpha in (0.2, 0.5, 0.8):
        s = sampler(groups, "hybrid", 10, alpha=alpha, seed=7)
        kinds = []
        for epoch in range(25):
            kinds += [b.kind for b in s.plan(epoch)]
        n = len(kinds)
        mono = sum(k == "mono" for k in kinds) / n
        # every group has every language, so the coin is never overruled: binomial, 4 sigma
        assert abs(mono - alpha) <= 4 * math.sqrt(alpha * (1 - alpha) / n), (alpha, mono, n)


def test_alpha_zero_and_one_reduce_to_the_pure_samplers() -> None:
    groups = [
        ParallelGroup(f"g{i}", {"en": "q", "de": "q", "fr": "q"}, {"en": "p", "de": "p", "fr": "p"}) for i in range(40)
    ]
    for alpha, pure, kind in ((1.0, "monolingual", "mono"), (0.0, "crosslingual", "cross")):
        hybrid = sampler(groups, "hybrid", 6, alpha=alpha, seed=5)
        assert list(hybrid) == list(sampler(groups, pure, 6, seed=5))
        assert {b.kind for b in hybrid.plan(0)} == {kind}


def test_monolingual_language_is_uniform_across_languages() -> None:
    groups = [ParallelGroup(f"g{i}", {lang: "q" for lang in LANGS}, {lang: "p" for lang in LANGS}) for i in range(500)]
    s = sampler(groups, "monolingual", 10, seed=1)
    counts = dict.fromkeys(LANGS, 0)
    for epoch in range(10):
        for planned in s.plan(epoch):
            g, q, _ = all_pairs(groups)[planned.rows[0]]
            counts[q] += 1
    expected = sum(counts.values()) / len(LANGS)
    assert all(abs(c - expected) < 0.2 * expected for c in counts.values()), counts


def test_composition_counts_batches_and_pairs() -> None:
    groups = [ParallelGroup(f"g{i}", {"en": "q", "de": "q"}, {"en": "p", "de": "p"}) for i in range(20)]
    s = sampler(groups, "hybrid", 5, seed=2)
    composition = s.composition(0)
    assert composition["mono_batches"] + composition["cross_batches"] == len(s) == 4
    assert sum(composition["language_pairs"].values()) == 20  # type: ignore[attr-defined]


def test_bad_arguments() -> None:
    import pytest

    groups = [ParallelGroup("g", {"en": "q"}, {"en": "p"})]
    with pytest.raises(ValueError, match="alpha"):
        HybridBatchSampler(groups, all_pairs(groups), 4, alpha=1.5)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_sampler("bilingual", groups, all_pairs(groups), 4)


def two_datasets(qa: int = 120, bitext: int = 30) -> list[ParallelGroup]:
    """QA groups in three languages beside a small de-en bitext: the rare-language user's mix."""
    groups = [ParallelGroup(f"qa{i}", {x: f"q{i}{x}" for x in ("en", "de", "fr")},
                            {x: f"p{i}{x}" for x in ("en", "de", "fr")}, source="qa") for i in range(qa)]
    groups += [ParallelGroup(f"bt{i}", {"de": f"d{i}", "en": f"e{i}"}, {"de": f"d{i}", "en": f"e{i}"},
                             cross_only=True, source="rare") for i in range(bitext)]
    return groups


def test_cross_lingual_batches_follow_the_dataset_shares_within_sampling_error() -> None:
    groups = two_datasets()
    shares = {"qa": 0.3, "rare": 0.7}
    s = make_sampler("crosslingual", groups, all_pairs(groups), 4, cross_shares=shares)
    drawn: list[str] = []
    for epoch in range(8):
        plan = s.plan(epoch)
        assert len(plan) == math.ceil(len(groups) / 4)  # as long as one pass over the groups
        for batch in plan:
            sources = {groups[all_pairs(groups)[row][0]].source for row in batch.rows}
            assert len(sources) == 1 and len(batch.rows) == 4  # one dataset per batch, no group twice
            assert len({all_pairs(groups)[row][0] for row in batch.rows}) == 4
            drawn.append(sources.pop())
    share = drawn.count("rare") / len(drawn)
    sigma = (0.7 * 0.3 / len(drawn)) ** 0.5
    assert abs(share - 0.7) < 4 * sigma, (share, len(drawn))
    # the 30 bitext pairs cycle: seen many times per epoch, which the composition states
    composition = s.composition(0)
    rare = composition["cross_by_dataset"]["rare"]  # type: ignore[index]
    assert rare["share"] == 0.7 and rare["pairs"] == 4 * rare["batches"]
    assert rare["pairs"] > 30  # more than one pass over the rare dataset within an epoch


def test_default_shares_are_proportional_and_one_dataset_keeps_the_plain_plan() -> None:
    groups = two_datasets(qa=90, bitext=30)
    s = make_sampler("hybrid", groups, all_pairs(groups), 6, alpha=0.5)
    assert s.cross_shares == {"qa": 0.75, "rare": 0.25}
    qa_only = [g for g in groups if g.source == "qa"]
    plain = make_sampler("hybrid", qa_only, all_pairs(qa_only), 6, alpha=0.5)
    assert plain.cross_shares is None and "cross_by_dataset" not in plain.composition(0)
    seen = [row for batch in plain.plan(0) for row in batch.rows]
    assert len({all_pairs(qa_only)[row][0] for row in seen}) == len(seen) == len(qa_only)  # once each
    try:
        make_sampler("hybrid", groups, all_pairs(groups), 6, cross_shares={"nope": 1.0})
    except ValueError as exc:
        assert "not in the training data" in str(exc)
    else:
        raise AssertionError("an unknown dataset in the shares was accepted")


def test_steps_for_passes_sees_the_bitext_that_many_times_within_sampling_error() -> None:
    from xling.models.training.trainer import mixing_record

    groups = two_datasets(qa=120, bitext=30)
    s = make_sampler("hybrid", groups, all_pairs(groups), 4, alpha=0.5, cross_shares={"qa": 0.3, "rare": 0.7})
    steps = s.steps_for_passes(5)
    assert steps == math.ceil(5 * 30 / (0.5 * 0.7 * 4))  # a cross batch half the time, the rare set's 70% of those
    passes = mixing_record(s, groups, steps)["rare"]["passes"]
    rare_batches_sd = (steps * 0.35 * 0.65) ** 0.5
    assert abs(passes - 5) < 4 * rare_batches_sd * 4 / 30, passes
    # one dataset (no mixing): the bitext's share of the cross-lingual queue
    rare_only = [g for g in groups if g.source == "rare"]
    assert make_sampler("crosslingual", rare_only, all_pairs(rare_only), 8).steps_for_passes(2) == math.ceil(2 * 30 / 8)
    qa_only = [g for g in groups if g.source == "qa"]
    no_bitext = make_sampler("hybrid", qa_only, all_pairs(qa_only), 4)
    bitext_unused = make_sampler("hybrid", groups, all_pairs(groups), 4, cross_shares={"qa": 1.0})
    for bad, message in ((no_bitext, "needs a bitext"), (bitext_unused, "share of 0")):
        try:
            bad.steps_for_passes(1)
        except ValueError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{message}: accepted")
