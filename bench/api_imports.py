"""What the api process loads before it serves: the seconds and the memory of importing `xling.app.main`, and
whether the training stack comes with it, for this checkout against an earlier commit (issue 29: the api
validates job requests without loading the trainer).

The earlier commit is checked out into a temporary git worktree and imported through an import root of its own
(a folder whose `xling` links to it), so both run on the same interpreter and packages. The runs alternate,
`--runs` of each, in fresh processes; the table gives medians.

    python -m bench.api_imports --before bf32a2a --out bench/results/api_imports.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT
from xling.models.files import write_json_atomic

TRAINING_STACK = ("sentence_transformers", "accelerate", "datasets", "xling.models.training.trainer")
PROBE = f"""
import json, resource, sys, time
started = time.perf_counter()
import xling.app.main
seconds = time.perf_counter() - started
stack = sorted({{m.split('.')[0] if not m.startswith('xling') else m for m in sys.modules
                if m.startswith({TRAINING_STACK!r})}})
print(json.dumps({{"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "modules": len(sys.modules), "training_stack": stack}}))
"""


def import_root(checkout: Path, folder: Path) -> Path:
    """A folder whose `xling` is `checkout` (the repository root is the package, pyproject.toml's mapping)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "xling").symlink_to(checkout)
    return folder


def probe(root: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                         cwd=root).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the git commit to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/api_imports.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            roots = {"before": import_root(worktree, Path(scratch) / "root-before"),
                     "after": import_root(ROOT, Path(scratch) / "root-after")}
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in roots}
            for _ in range(args.runs):
                for label, root in roots.items():
                    runs[label].append(probe(root))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=True)
    summary = {
        label: {"seconds": round(statistics.median(r["seconds"] for r in found), 2),
                "max_rss_mb": round(statistics.median(r["max_rss_mb"] for r in found)),
                "modules": found[0]["modules"], "training_stack": found[0]["training_stack"]}
        for label, found in runs.items()
    }
    result = {"before": args.before, "runs": runs, "summary": summary, "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count()}
    write_json_atomic(args.out, result)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
