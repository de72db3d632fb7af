"""Evaluation and experiment reports: JSON (everything), Markdown (tables), PNG (heatmap, bar chart)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written by servers and workers
import matplotlib.pyplot as plt  # noqa: E402

from xling.models.evaluation.evaluate import EvaluationReport  # noqa: E402

DPI = 100
SUMMARY_COLUMNS = [
    ("mono_map", "Mono mAP"),
    ("cross_map", "Cross mAP"),
    ("multi_map", "Multi mAP"),
    ("rank_distance", "Rank dist."),
]
BITEXT_COLUMNS = [("bitext_acc@1", "acc@1")]
LOWER_IS_BETTER = {"rank_distance"}


def columns_for(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline columns of one evaluation set: LAReQA's four, or a bitext set's accuracy@1."""
    return BITEXT_COLUMNS if "bitext_acc@1" in metrics else SUMMARY_COLUMNS


def heatmap_size(n_langs: int) -> tuple[int, int]:
    """Pixel (width, height) of the X->Y heatmap for n languages."""
    return int((2.5 + 0.7 * n_langs) * DPI), int((1.8 + 0.6 * n_langs) * DPI)


def _fmt(value: float, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1f}" if key in LOWER_IS_BETTER else f"{value:.3f}"


def write_heatmap(pair_map: dict[str, dict[str, float]], path: Path, title: str) -> None:
    langs = sorted(pair_map)
    grid = [[pair_map[x].get(y, math.nan) for y in langs] for x in langs]
    width, height = heatmap_size(len(langs))
    fig, ax = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI)
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    ax.set_xlabel("candidate language Y")
    ax.set_ylabel("query language X")
    ax.set_title(title, fontsize=9)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.subplots_adjust(left=0.15, right=0.9, bottom=0.15, top=0.9)
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the pixel size stays heatmap_size(n)
    plt.close(fig)


def evaluation_markdown(report: EvaluationReport) -> str:
    lines = [f"# Evaluation of `{report.model_version}`", "", f"Retrieval: {report.retrieval}.", ""]
    if report.lareqa:
        lines += ["| set | " + " | ".join(label for _, label in SUMMARY_COLUMNS) + " | R@1 multi | R@10 multi |"]
        lines += ["|---" * (len(SUMMARY_COLUMNS) + 3) + "|"]
        for ev in report.lareqa:
            results = [(ev.name, ev.result)] + ([(f"{ev.name}, centred", ev.centred)] if ev.centred else [])
            for label, result in results:
                m = result.metrics
                cells = [_fmt(m[k], k) for k, _ in SUMMARY_COLUMNS] + [_fmt(m["multi_r@1"]), _fmt(m["multi_r@10"])]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for ev in report.lareqa:
            lines += ["", f"## {ev.name}: per language ({ev.data_size})", ""]
            lines += [
                "| language | questions | Mono mAP | Cross mAP (from X) | Multi mAP | Rank dist. |",
                "|---|---|---|---|---|---|",
            ]
            for lang, row in ev.result.per_language.items():
                lines.append(
                    f"| {lang} | {int(row['questions'])} | {_fmt(row['mono_map'])} | {_fmt(row['cross_map_from'])} | "
                    f"{_fmt(row['multi_map'])} | {_fmt(row['rank_distance'], 'rank_distance')} |"
                )
            lines += ["", f"![X->Y mAP]({heatmap_name(ev.name)})", ""]
            lines.append(f"Encoding {ev.encode_seconds:.1f} s, metrics {ev.metric_seconds:.1f} s. Ties: pessimistic.")
    for bt in report.bitext:
        centred = bt.result.get("centred")
        lines += [
            "",
            f"## {bt.name}: bitext retrieval (accuracy@1)",
            "",
            "| pair | lines | → | ← | mean |" + (" centred → | centred ← | centred mean |" if centred else ""),
            "|---|---|---|---|---|" + ("---|---|---|" if centred else ""),
        ]
        for index, row in enumerate(bt.result["pairs"]):
            flag = " ⚑ few lines" if row["flagged"] else ""
            forward, backward = f"{row['src']}->{row['tgt']}", f"{row['tgt']}->{row['src']}"
            rows = [row, centred["pairs"][index]] if centred else [row]
            scores = " | ".join(_fmt(r[key]) for r in rows for key in (forward, backward, "mean"))
            lines.append(f"| {row['pair']}{flag} | {row['lines']} | {scores} |")
        centred_macro = bt.centred_accuracy
        lines.append(f"\nMacro average: {_fmt(bt.accuracy)}"
                     + (f", centred {_fmt(centred_macro)}" if centred_macro is not None else ""))
    return "\n".join(lines) + "\n"


def heatmap_name(set_name: str) -> str:
    return f"heatmap_{set_name}.png"


def write_evaluation_report(
    report: EvaluationReport, out: Path, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps({**report.to_dict(), **(extra or {})}, indent=2, ensure_ascii=False))
    paths["markdown"].write_text(evaluation_markdown(report))
    for ev in report.lareqa:
        paths[f"heatmap:{ev.name}"] = out / heatmap_name(ev.name)
        write_heatmap(ev.result.pair_map, paths[f"heatmap:{ev.name}"], f"{report.model_version} on {ev.name}: mAP(X→Y)")
    return paths


def best_rows(rows: list[dict[str, Any]], set_name: str, key: str) -> set[int]:
    values = [row["sets"][set_name][key] for row in rows]
    pick = min if key in LOWER_IS_BETTER else max
    best = pick(v for v in values if not math.isnan(v))
    return {i for i, v in enumerate(values) if v == best}


def experiment_markdown(rows: list[dict[str, Any]], set_names: list[str]) -> str:
    """rows: {"label", "model_version", "sets": {set: metrics}}; best in each column in bold."""
    columns = {s: columns_for(rows[0]["sets"][s]) for s in set_names}
    header = ["model"] + [f"{s} {label}" for s in set_names for _, label in columns[s]]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    best = {(s, k): best_rows(rows, s, k) for s in set_names for k, _ in columns[s]}
    for i, row in enumerate(rows):
        cells = [row["label"]]
        for s in set_names:
            for key, _ in columns[s]:
                text = _fmt(row["sets"][s][key], key)
                cells.append(f"**{text}**" if i in best[(s, key)] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_experiment_chart(rows: list[dict[str, Any]], set_names: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(set_names), figsize=(5 * len(set_names), 3.6), dpi=DPI, squeeze=False)
    width = 0.8 / len(rows)
    for ax, set_name in zip(axes[0], set_names, strict=True):
        keys = [k for k, _ in columns_for(rows[0]["sets"][set_name]) if k not in LOWER_IS_BETTER]
        for i, row in enumerate(rows):
            values = [row["sets"][set_name][k] for k in keys]
            ax.bar([j + i * width for j in range(len(keys))], values, width, label=row["label"])
        ax.set_xticks(
            [j + width * (len(rows) - 1) / 2 for j in range(len(keys))], [k.replace("_map", "") for k in keys]
        )
        ax.set_ylabel("accuracy@1" if keys == ["bitext_acc@1"] else "mAP")
        ax.set_title(set_name)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
