"""Hybrid queries fused inside the micro-batch (serving/hybrid.py `fuse_batch`) rank exactly as each query in a
batch of its own, deepening included: a batch of queries under different filters, with a first window small enough
that the threshold algorithm must fetch deeper dense neighbours for some of them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from tests.synthetic import LANGS, corpus, smooth_fake_encoder
from xling.models.index.lexical import LexicalDoc, LexicalIndex
from xling.models.index.qdrant_index import QdrantIndex, create_collection
from xling.models.index.qdrant_lexical import QdrantLexical
from xling.models.index.slots import DocEntry
from xling.models.index.sparse import MemoryLengths
from xling.models.index.vector_index import VectorIndex
from xling.serving.metrics import Metrics
from xling.serving.search import Search, SearchQuery
from xling.state.indexing import ServingPair


class CountingIndex(VectorIndex):
    """Counts the searches a fusion makes: a batch asks once per round, not once per query."""

    searches = 0

    def search(self, *args: Any, **kwargs: Any) -> Any:
        CountingIndex.searches += 1
        return super().search(*args, **kwargs)


@pytest.mark.parametrize("deep_first_fetch", [False, True], ids=["fetch-window", "fetch-deeper"])
@pytest.mark.parametrize("method", ["weighted", "rrf"])
def test_a_batch_of_hybrid_queries_fuses_as_each_query_alone(make_settings: Any, tmp_path: Path, method: str,
                                                             deep_first_fetch: bool) -> None:
    settings = make_settings(fusion_window=3, fusion_weight=0.5, fusion=method)
    docs = corpus(12)
    texts = [doc["text"] for doc in docs]
    index = CountingIndex(16, "fake")
    index.upsert([DocEntry(d["id"], d["lang"], d["metadata"]) for d in docs], smooth_fake_encoder(texts, "passage"))
    lexical = LexicalIndex(tmp_path / "lexical")
    lexical.upsert([LexicalDoc(d["id"], d["text"], d["lang"], d["metadata"]) for d in docs])
    lexical.commit("1-0")
    pair = ServingPair(None, index, "1-0")  # type: ignore[arg-type]  # the encoder is not asked: vectors are given
    search = Search(settings, Metrics(), lambda: pair, lambda _: lexical, None,  # type: ignore[arg-type]
                    scans_every_vector=deep_first_fetch)

    rng = np.random.default_rng(3)
    queries = []
    for n in range(12):
        words = texts[int(rng.integers(len(texts)))].split()
        langs = () if n % 3 == 0 else tuple(str(x) for x in rng.choice(LANGS, size=2, replace=False))
        where = (("parity", 1),) if n % 2 else ()
        queries.append(SearchQuery(" ".join(words[: 2 + n % 4]), k=5, langs=langs, where=where,
                                   mode="hybrid"))
    queries.append(SearchQuery("a query no document shares a word with: zzqx", k=5, mode="hybrid"))
    vectors = smooth_fake_encoder([q.text for q in queries], "query")
    found = search._search_vectors(pair, queries, vectors)

    CountingIndex.searches = 0
    batched = search.hybrid.fuse_batch(pair, queries, found, vectors)
    batch_searches = CountingIndex.searches
    CountingIndex.searches = 0
    alone = [search.hybrid.fuse_batch(pair, [query], [found[row]], vectors[row : row + 1])[0]
             for row, query in enumerate(queries)]
    deepened = CountingIndex.searches  # the queries that had to look deeper, one search each (or more)

    assert sorted(batched) == list(range(len(queries)))
    for row, hits in enumerate(alone):
        assert [hit.ext_id for hit in batched[row]] == [hit.ext_id for hit in hits], queries[row]
        assert [hit.score for hit in batched[row]] == pytest.approx([hit.score for hit in hits], abs=1e-6)
        assert [hit.ranks for hit in batched[row]] == [hit.ranks for hit in hits]
    if method == "weighted" and not deep_first_fetch:
        assert deepened >= 3  # the small window made several queries look deeper...
        assert batch_searches < deepened  # ...which the batch did in fewer searches, a round at a time
    elif method == "weighted":
        assert batch_searches <= deepened  # fetched four times deeper at first, fewer (or no) rounds are left
    else:
        assert deepened == batch_searches == 0  # RRF ranks each list's first window: nothing deeper to fetch


class CountingQdrant(QdrantIndex):
    """Counts the cosine lookups a fusion makes on a tier where each is a round trip."""

    calls: Counter[str] = Counter()

    def scores(self, *args: Any, **kwargs: Any) -> Any:
        CountingQdrant.calls["scores"] += 1
        return super().scores(*args, **kwargs)

    def scores_many(self, *args: Any, **kwargs: Any) -> Any:
        CountingQdrant.calls["scores_many"] += 1
        return super().scores_many(*args, **kwargs)


def test_on_a_tier_of_round_trips_a_batch_gathers_its_lookups_and_ranks_as_direct_lookups(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(fusion_window=3, fusion_weight=0.5)
    docs = corpus(12)
    texts = [doc["text"] for doc in docs]
    client = QdrantClient(location=":memory:")
    create_collection(client, "c", 16, lexical=True)
    index = CountingQdrant(client, "c", 16, "fake", lengths=MemoryLengths())
    index.upsert([DocEntry(d["id"], d["lang"], d["metadata"]) for d in docs], smooth_fake_encoder(texts, "passage"),
                 texts=texts)
    lexical = QdrantLexical(index)
    pair = ServingPair(None, index, "1-0")  # type: ignore[arg-type]  # the encoder is not asked: vectors are given
    searches = {
        batched: Search(settings, Metrics(), lambda: pair, lambda _: lexical, None,  # type: ignore[arg-type]
                        lookups_are_round_trips=batched)
        for batched in (False, True)
    }
    rng = np.random.default_rng(5)
    queries = [SearchQuery(" ".join(texts[int(rng.integers(len(texts)))].split()[: 2 + n % 3]), k=5, mode="hybrid",
                           where=(("parity", 1),) if n % 2 else ()) for n in range(10)]
    vectors = smooth_fake_encoder([q.text for q in queries], "query")
    results = {}
    for batched, search in searches.items():
        found = search._search_vectors(pair, queries, vectors)
        CountingQdrant.calls.clear()
        results[batched] = search.hybrid.fuse_batch(pair, queries, found, vectors)
        calls = dict(CountingQdrant.calls)
        if batched:
            assert calls.get("scores", 0) == 0 and 1 <= calls["scores_many"] <= 3  # a call per round, not per query
        else:
            assert calls["scores"] >= 5  # one lookup per query that needed cosines: what batching saves
    for row in range(len(queries)):
        assert [(h.ext_id, h.ranks) for h in results[True][row]] == [(h.ext_id, h.ranks) for h in results[False][row]]
        assert [h.score for h in results[True][row]] == pytest.approx([h.score for h in results[False][row]])
