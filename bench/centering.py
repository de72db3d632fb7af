"""Serving-side centring on XQuAD-R with the served default encoder: what the means need, what queries need.

Everything goes through the serving code (`xling.models.centering.calibrate`, `Centering.documents/queries`,
`xling.models.language.LanguageDetector`); only the encoder's vectors are cached, so each row costs a metric
pass, not an encode. Parts:
- query side: the query's language known, detected (among the corpus's languages, or among all 97), or
  unknown (the global query mean);
- calibration size: means from N documents per language (several random draws) against means from all;
- a corpus the means were not calibrated on: means from MLQA-R's candidates, applied to XQuAD-R, and the
  drift figure (relative shift of a language's mean) that says how far apart the two are;
- query-language detection accuracy on the XQuAD-R questions, per language.

    python -m bench.centering --out bench/results/centering_e5.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import bench_data_dir, default_model
from xling.models.centering import Centering, calibrate
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.encoder import TextKind
from xling.models.evaluation.lareqa import lareqa_metrics
from xling.models.files import write_json_atomic
from xling.models.language import LanguageDetector
from xling.models.resolve import ModelSource
from xling.state.indexing import load_encoder
from xling.state.settings import Settings

SIZES = (10, 30, 100, 300, 1000)
DRAWS = 3
HEADLINE = ("mono_map", "cross_map", "multi_map", "rank_distance")


class CachedEncoder:
    """The served encoder's vectors, each (text, kind) encoded once and kept in an .npz beside the results."""

    def __init__(self, path: Path, source: ModelSource | None = None) -> None:
        self.path = path
        self.source = source
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        if path.is_file():
            stored = np.load(path, allow_pickle=False)
            for kind in ("query", "passage"):
                texts = json.loads(str(stored[f"{kind}_texts"]))
                self.vectors.update({(kind, t): v for t, v in zip(texts, stored[f"{kind}_vectors"], strict=True)})
        self._encoder: Any = None

    def encode(self, texts: list[str], kind: TextKind) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if (kind, t) not in self.vectors))
        if missing:
            if self._encoder is None:
                self._encoder = load_encoder(self.source or default_model(), Settings())
            print(f"encoding {len(missing)} {kind} texts", flush=True)
            self.vectors.update(zip(((kind, t) for t in missing), self._encoder.encode(missing, kind), strict=True))
            self.save()
        return np.stack([self.vectors[(kind, t)] for t in texts])

    def save(self) -> None:
        arrays: dict[str, Any] = {}
        for kind in ("query", "passage"):
            keys = [t for k, t in self.vectors if k == kind]
            arrays[f"{kind}_texts"] = np.asarray(json.dumps(keys))
            arrays[f"{kind}_vectors"] = np.stack([self.vectors[(kind, t)] for t in keys]) if keys else np.zeros((0, 1))
        temporary = self.path.with_suffix(".tmp.npz")
        np.savez(temporary, **arrays)
        temporary.replace(self.path)


def candidates(data: LareqaData) -> list[tuple[str, str, str]]:
    """The candidate pool as (id, language, text): the corpus a service would hold."""
    return [(f"c{i}", data.languages[li], text)
            for i, (li, text) in enumerate(zip(data.candidate_langs, data.candidate_texts, strict=True))]


def scores(data: LareqaData, queries: np.ndarray, docs: np.ndarray) -> dict[str, float]:
    metrics = lareqa_metrics(data, queries, docs).metrics
    return {key: round(float(metrics[key]), 4) for key in HEADLINE}


def centred_scores(
    data: LareqaData, encoder: CachedEncoder, centering: Centering, query_langs: Sequence[str | None]
) -> dict[str, float]:
    docs = encoder.encode(data.candidate_texts, "passage")
    queries = encoder.encode(data.question_texts, "query")
    doc_langs = [data.languages[i] for i in data.candidate_langs]
    return scores(data, centering.queries(queries, query_langs), centering.documents(docs, doc_langs))


def relative_shift(a: np.ndarray, b: np.ndarray) -> float:
    """How far mean `a` is from mean `b`, as a share of `b`'s length: the drift figure the service reports."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--out", type=Path, default=Path("bench/results/centering_e5.json"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/xling-centering-vectors.npz"))
    parser.add_argument("--min-count", type=int, default=10)
    args = parser.parse_args()
    data_dir = bench_data_dir(args.data)
    xquad, mlqa = load_lareqa(data_dir / "xquad-r"), load_lareqa(data_dir / "mlqa-r")
    encoder = CachedEncoder(args.cache)
    version = default_model().version
    results: dict[str, Any] = {
        "command": "python -m bench.centering " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                             if v is not None),
        "model": version, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"), "evaluation": "XQuAD-R, 11 languages",
    }
    true_langs = [xquad.languages[i] for i in xquad.question_langs]
    queries = encoder.encode(xquad.question_texts, "query")
    docs = encoder.encode(xquad.candidate_texts, "passage")
    results["raw"] = scores(xquad, queries, docs)
    print("raw", results["raw"], flush=True)

    pool = candidates(xquad)
    full = calibrate(encoder.encode, pool, model_version=version, min_count=args.min_count)

    # Query side.
    detector = LanguageDetector()
    started = time.perf_counter()
    among = set(full.languages)
    detected_among = [detector.detect(text, among) for text in xquad.question_texts]
    detect_seconds = time.perf_counter() - started
    detected_any = [detector.detect(text) for text in xquad.question_texts]
    per_lang = {
        lang: {
            "among_corpus_languages": round(statistics.fmean(
                d == t for d, t in zip(detected_among, true_langs, strict=True) if t == lang), 4),
            "among_all": round(statistics.fmean(
                d == t for d, t in zip(detected_any, true_langs, strict=True) if t == lang), 4),
        }
        for lang in xquad.languages
    }
    results["detection"] = {
        "detector": "py3langid 0.4 (naive Bayes, 97 languages)",
        "questions": len(true_langs),
        "accuracy_among_corpus_languages": round(statistics.fmean(
            d == t for d, t in zip(detected_among, true_langs, strict=True)), 4),
        "accuracy_among_all": round(statistics.fmean(d == t for d, t in zip(detected_any, true_langs, strict=True)), 4),
        "ms_per_query": round(1000 * detect_seconds / len(true_langs), 3),
        "per_language": per_lang,
    }
    print("detection", results["detection"]["accuracy_among_corpus_languages"],
          results["detection"]["accuracy_among_all"], flush=True)
    wrong = [i for i, (d, t) in enumerate(zip(detected_among, true_langs, strict=True)) if d != t]
    results["query_side"] = {
        "language known": centred_scores(xquad, encoder, full, true_langs),
        "language detected among the corpus's": centred_scores(xquad, encoder, full, detected_among),
        "language detected among all 97": centred_scores(
            xquad, encoder, full, [d if d in among else None for d in detected_any]),
        "language unknown (global query mean)": centred_scores(xquad, encoder, full, [None] * len(true_langs)),
        "language wrong on purpose (a fixed other language)": centred_scores(
            xquad, encoder, full, [full.languages[(full.languages.index(t) + 1) % len(full.languages)]
                                   for t in true_langs]),
        "misdetected questions": len(wrong),
    }
    print("query side", json.dumps(results["query_side"], indent=1), flush=True)

    # Calibration size.
    by_lang: dict[str, list[tuple[str, str, str]]] = {}
    for item in pool:
        by_lang.setdefault(item[1], []).append(item)
    sweep: dict[str, Any] = {}
    for size in SIZES:
        runs, shifts = [], []
        for draw in range(DRAWS if size < min(len(v) for v in by_lang.values()) else 1):
            rng = random.Random(draw)
            sample = [item for items in by_lang.values() for item in rng.sample(items, min(size, len(items)))]
            centering = calibrate(encoder.encode, sample, model_version=version, min_count=min(size, args.min_count))
            runs.append(centred_scores(xquad, encoder, centering, true_langs))
            shifts.append(max(relative_shift(centering.means[lang], full.means[lang]) for lang in full.languages))
        sweep[str(size)] = {
            "draws": len(runs),
            **{key: {"mean": round(statistics.fmean(r[key] for r in runs), 4),
                     "std": round(statistics.stdev(r[key] for r in runs), 4) if len(runs) > 1 else 0.0}
               for key in HEADLINE},
            "max_shift_from_full_means": round(max(shifts), 4),
        }
        print("size", size, sweep[str(size)], flush=True)
    sweep["all"] = {"documents_per_language": {lang: full.counts[lang] for lang in full.languages},
                    **results["query_side"]["language known"]}
    results["calibration_size"] = sweep

    # Another corpus: means calibrated on MLQA-R's candidates serve XQuAD-R.
    other = calibrate(encoder.encode, candidates(mlqa), model_version=version, min_count=args.min_count)
    results["other_corpus"] = {
        "means from": "MLQA-R candidates (ar de en es hi vi zh); el ru th tr fall back",
        "scores": centred_scores(xquad, encoder, other, true_langs),
        "shift_per_language": {lang: round(relative_shift(other.means[lang], full.means[lang]), 4)
                               for lang in other.languages if lang in full.means},
    }
    print("other corpus", results["other_corpus"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
