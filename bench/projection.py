"""Beyond the mean (issue 32): does removing more language identity than each language's mean help LAReQA?

Every variant transforms the same vectors (the served encoder's, encoded once and cached), with its statistics
estimated on each set's own candidate pool, as a service estimates its means on the corpus it holds; questions
take their own language's statistics. Each is scored on Mono / Cross / Multi mAP and rank distance:
- `raw`: the vectors as encoded;
- `centred`: each language's mean removed, normalised again (what the service serves by default);
- `lir-<r>`: LIR (Xie et al., EMNLP 2021, arXiv 2109.04727): per language, the top-r right singular vectors of its
  candidates' embeddings (not centred, so the first is close to the mean's direction) projected out of its texts;
- `lir-c-<r>`: the mean removed first, then the top-r singular directions of the centred embeddings of the language;
- `lsar-<r>`: one subspace for every language (after LSAR, arXiv 2401.05792): the top-r right singular vectors of
  the matrix of language means projected out of every text;
- `lsar-c-<r>`: each language's mean removed, then that shared subspace.

r is chosen on MLQA-R (development) and reported on XQuAD-R (evaluation only).

    python -m bench.projection --data ../shared/data --sets mlqa-r xquad-r --ranks 1 2 4 8 \\
        --out bench/results/projection_e5.json

The vectors are cached in /tmp (`--cache`); results are written after each variant, and a second run skips what
the output file already holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.centering import CachedEncoder, scores
from bench.common import ROOT, bench_data_dir, default_model
from xling.models.centering import center, language_means
from xling.models.data.lareqa import load_lareqa

Vectors = tuple[np.ndarray, np.ndarray]  # (questions, candidates)
Variant = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], Vectors]


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def top_directions(matrix: np.ndarray, rank: int) -> np.ndarray:
    """(d, rank): the top right singular vectors of `matrix`."""
    _, _, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return vt[:rank].T


def project_out(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return vectors - (vectors @ basis) @ basis.T


def per_language(vectors: np.ndarray, langs: np.ndarray, bases: dict[str, np.ndarray]) -> np.ndarray:
    out = vectors.astype(np.float64)
    for lang, basis in bases.items():
        rows = langs == lang
        out[rows] = project_out(out[rows], basis)
    return out


def centred_raw(vectors: np.ndarray, langs: np.ndarray, means: dict[str, np.ndarray]) -> np.ndarray:
    """Each row minus its language's mean, not normalised (what the projections start from)."""
    out = vectors.astype(np.float64)
    for lang, mean in means.items():
        out[langs == lang] -= mean
    return out


def variants(ranks: list[int]) -> dict[str, Variant]:
    def raw(q: np.ndarray, c: np.ndarray, ql: np.ndarray, cl: np.ndarray) -> Vectors:
        return q, c

    def centred(q: np.ndarray, c: np.ndarray, ql: np.ndarray, cl: np.ndarray) -> Vectors:
        means = language_means(c, list(cl))
        return center(q, list(ql), means), center(c, list(cl), means)

    def lir(rank: int, after_mean: bool) -> Variant:
        def run(q: np.ndarray, c: np.ndarray, ql: np.ndarray, cl: np.ndarray) -> Vectors:
            if after_mean:
                means = language_means(c, list(cl))
                q, c = centred_raw(q, ql, means), centred_raw(c, cl, means)
            bases = {lang: top_directions(c[cl == lang], rank) for lang in np.unique(cl)}
            return unit(per_language(q, ql, bases)), unit(per_language(c, cl, bases))
        return run

    def lsar(rank: int, after_mean: bool) -> Variant:
        def run(q: np.ndarray, c: np.ndarray, ql: np.ndarray, cl: np.ndarray) -> Vectors:
            means = language_means(c, list(cl))
            basis = top_directions(np.stack([means[lang] for lang in sorted(means)]), rank)
            if after_mean:
                q, c = centred_raw(q, ql, means), centred_raw(c, cl, means)
            return unit(project_out(q.astype(np.float64), basis)), unit(project_out(c.astype(np.float64), basis))
        return run

    table: dict[str, Variant] = {"raw": raw, "centred": centred}
    for rank in ranks:
        table[f"lir-{rank}"] = lir(rank, after_mean=False)
        table[f"lir-c-{rank}"] = lir(rank, after_mean=True)
        table[f"lsar-{rank}"] = lsar(rank, after_mean=False)
        table[f"lsar-c-{rank}"] = lsar(rank, after_mean=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding the sets (default ../shared/data)")
    parser.add_argument("--sets", nargs="+", default=["mlqa-r", "xquad-r"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/xling-projection-e5.npz"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "projection_e5.json")
    args = parser.parse_args()
    data_dir = bench_data_dir(args.data)
    source = default_model()
    encoder = CachedEncoder(args.cache, source)
    results: dict[str, dict[str, dict[str, float]]] = (
        json.loads(args.out.read_text())["results"] if args.out.is_file() else {}
    )
    table = variants(args.ranks)
    for name in args.sets:
        data = load_lareqa(data_dir / name)
        q = encoder.encode(data.question_texts, "query")
        c = encoder.encode(data.candidate_texts, "passage")
        ql = np.asarray([data.languages[i] for i in data.question_langs])
        cl = np.asarray([data.languages[i] for i in data.candidate_langs])
        done = results.setdefault(name, {})
        for variant, transform in table.items():
            if variant in done:
                continue
            started = time.perf_counter()
            done[variant] = scores(data, *transform(q, c, ql, cl))
            print(f"{name:8} {variant:10} {done[variant]}  ({time.perf_counter() - started:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "model": source.version, "machine": platform.platform(), "processor": platform.processor(),
                "args": {"sets": args.sets, "ranks": args.ranks}, "results": results,
            }, indent=2))


if __name__ == "__main__":
    main()
