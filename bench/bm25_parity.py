"""Issue 29's "the fusion results must not change": LAReQA scores of lexical and the default hybrid retrieval with
BM25 from the replica's lexical index (sparse matrices, models/index/bm25.py) against BM25 from tantivy as the
index scored it before (one tantivy index per language partition: the same terms, whitespace-joined, in a
field with term frequencies; the schema and queries of models/index/lexical.py before issue 29). The vectors are
the same in both rows (the served encoder, cached), so any difference comes from BM25 alone.

    python -m bench.bm25_parity --sets xquad-r --out bench/results/bm25_parity.json
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tantivy

from bench.centering import CachedEncoder
from bench.common import bench_data_dir, default_model
from bench.lexical import vectors
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.evaluation.lareqa import lareqa_metrics
from xling.models.evaluation.modes import RetrievalMode, lexical_matrix, rescorer
from xling.models.files import write_json_atomic
from xling.models.index.analysis import terms
from xling.models.index.fusion import Fusion

MODES = (RetrievalMode("lexical"), RetrievalMode("hybrid", Fusion()))  # Fusion(): the service's default


def tantivy_matrix(data: LareqaData) -> np.ndarray:
    """(questions, candidates) BM25 from tantivy, each candidate in its language's partition."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("terms", tokenizer_name="whitespace", index_option="freq")
    schema = builder.build()
    langs = [data.languages[i] for i in data.candidate_langs]
    matrix = np.zeros((len(data.question_texts), len(data.candidate_texts)), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="xling-parity-") as scratch:
        for lang in sorted(set(langs)):
            folder = Path(scratch) / lang
            folder.mkdir()
            index = tantivy.Index(schema, path=str(folder))
            writer = index.writer(heap_size=50_000_000, num_threads=1)
            for column, (text, doc_lang) in enumerate(zip(data.candidate_texts, langs, strict=True)):
                if doc_lang == lang:
                    writer.add_document(tantivy.Document(id=str(column), terms=" ".join(terms(text, lang))))
            writer.commit()
            index.reload()
            searcher = index.searcher()
            for row, question in enumerate(data.question_texts):
                words = [tantivy.Query.term_query(schema, "terms", t) for t in dict.fromkeys(terms(question, lang))]
                if not words:
                    continue
                query = tantivy.Query.boolean_query([(tantivy.Occur.Should, word) for word in words])
                for score, address in searcher.search(query, limit=len(data.candidate_texts), count=False).hits:
                    matrix[row, int(searcher.doc(address)["id"][0])] = score
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--sets", nargs="+", default=["xquad-r"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/bm25_parity.json"))
    args = parser.parse_args()
    source = default_model()
    encoder = CachedEncoder(Path(f"/tmp/xling-lexical-{source.version}.npz"), source)
    result: dict[str, Any] = {"command": f"python -m bench.bm25_parity --sets {' '.join(args.sets)}",
                              "model": source.version, "date": time.strftime("%Y-%m-%d"),
                              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "sets": {}}
    for name in args.sets:
        data = load_lareqa(bench_data_dir(args.data) / name)
        matrices = {"matrices": lexical_matrix(data), "tantivy": tantivy_matrix(data)}
        difference = np.abs(matrices["matrices"] - matrices["tantivy"])
        found: dict[str, Any] = {
            "bm25_pairs": int((matrices["tantivy"] > 0).sum()),
            "bm25_pairs_differing_by_1e-3": int((difference > 1e-3).sum()),
            "largest_bm25_difference": round(float(difference.max()), 5),
            "same_pairs_matched": bool(((matrices["matrices"] > 0) == (matrices["tantivy"] > 0)).all()),
            "rows": {},
        }
        for centred in (False, True):
            queries, docs = vectors(data, encoder, centred)
            for mode in MODES:
                for engine, bm25 in matrices.items():
                    metrics = lareqa_metrics(data, queries, docs, rescore=rescorer(mode, bm25, data.candidate_langs))
                    key = f"{'centred' if centred else 'raw'} | {mode.label} | {engine}"
                    found["rows"][key] = {m: round(float(metrics.metrics[m]), 4)
                                          for m in ("mono_map", "cross_map", "multi_map")}
                    print(name, key, found["rows"][key], flush=True)
        result["sets"][name] = found
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
