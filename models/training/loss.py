"""InfoNCE with in-batch negatives over cosine similarity x scale (scale 20 = temperature 0.05), and an optional
anchor that keeps some texts where the base model put them.

The anchor (TrainConfig.anchor_distillation): contrastive training on one corpus moves every language's
embeddings, including those of languages and domains the run never shows. A term that pulls the embeddings of the
anchored texts (those in the languages of the monolingual batches, whichever batch they are in) back toward a
frozen copy of the base (1 − cosine) keeps the base's geometry for what it already did well; the texts of the other
languages (a rare language's side of its bitext) are free to move toward their anchored translations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(
    queries: Tensor, passages: Tensor, scale: float = 20.0, hard_negatives: Tensor | None = None, first_target: int = 0
) -> Tensor:
    """Mean cross-entropy of each query against every passage (query i's own is passage first_target + i).

    queries: (b, d); passages: (B, d), B >= b (with several ranks, every rank's passages; this rank's queries start
    at first_target); hard_negatives: (n, d) extra candidates shared by all queries.
    """
    assert queries.shape[1] == passages.shape[1] and first_target + len(queries) <= len(passages), (
        queries.shape, passages.shape, first_target)
    candidates = passages if hard_negatives is None else torch.cat([passages, hard_negatives])
    logits = scale * F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    targets = torch.arange(first_target, first_target + queries.shape[0], device=queries.device)
    return F.cross_entropy(logits, targets)


def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) outside it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def row_counts(local: int, device: torch.device) -> list[int]:
    """How many rows each rank holds, in rank order ([local] outside torch.distributed)."""
    _, size = world()
    if size == 1:
        return [local]
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([local], device=device))
    return [int(c.item()) for c in counts]


def gather_rows(rows: Tensor, counts: list[int]) -> Tensor:
    """Every rank's rows, in rank order, with gradients flowing back to the rank each row came from (so a
    passage encoded on one device is a negative for the queries of every device). `counts`: rows per rank
    (`row_counts`); ranks may hold different numbers, so rows travel padded to the largest."""
    if len(counts) == 1:
        return rows
    padded = F.pad(rows, (0, 0, 0, max(counts) - len(rows)))
    parts = dist_nn.all_gather(padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def _rows(features: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The tokenised batch restricted to the rows `keep` marks (per-row tensors only; the rest as is)."""
    size = keep.shape[0]
    return {k: v[keep] if isinstance(v, Tensor) and v.dim() and v.shape[0] == size else v for k, v in features.items()}


class InfoNCELoss(nn.Module):
    """sentence-transformers loss: columns are (query, passage[, hard negative ...]).

    With `anchor` (a frozen copy of the base) and `anchor_weight` > 0, the loss adds anchor_weight × the mean
    drift from the anchor's embeddings of the anchored texts: labels (B, columns), 1 where a row's text in that
    column is anchored.
    """

    def __init__(
        self, model: nn.Module, scale: float = 20.0, anchor: nn.Module | None = None, anchor_weight: float = 0.0
    ) -> None:
        super().__init__()
        if anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")
        if anchor_weight > 0 and anchor is None:
            raise ValueError("anchor_weight > 0 needs an anchor model")
        self.model = model
        self.scale = scale
        self.anchor_weight = anchor_weight
        self.anchor = anchor
        if anchor is not None:
            anchor.eval()  # no dropout: the target is the base's embedding itself
            anchor.requires_grad_(False)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        embeddings = [self.model(columns)["sentence_embedding"] for columns in features]
        loss = self.compute_loss_from_embeddings(embeddings)
        if self.anchor is not None and self.anchor_weight > 0 and labels is not None:
            keep = labels.to(torch.bool).reshape(len(embeddings[0]), -1)
            # With several ranks every rank takes part (the count is summed over them), anchored texts or not.
            if bool(keep.any()) or world()[1] > 1:
                loss = loss + self.anchor_weight * self.anchor_drift(features, embeddings, keep)
        return loss

    def anchor_drift(self, features: list[dict[str, Tensor]], embeddings: list[Tensor], keep: Tensor) -> Tensor:
        """Mean drift of the anchored texts (keep: rows × columns) from the anchor's embeddings of the same texts."""
        assert self.anchor is not None
        drifts = []
        for column, (columns, student) in enumerate(zip(features, embeddings, strict=True)):
            rows = keep[:, column]
            if bool(rows.any()):
                with torch.no_grad():
                    target = self.anchor(_rows(columns, rows))["sentence_embedding"]
                drifts.append(1.0 - F.cosine_similarity(student[rows], target, dim=-1))
        drift = torch.cat(drifts) if drifts else embeddings[0][:0, 0]  # no anchored text on this rank
        # The mean over every rank's anchored texts: the ranks' gradients are averaged (DDP), so each rank's
        # share is its sum over the global count, times the number of ranks.
        _, size = world()
        return drift.sum() * size / max(sum(row_counts(len(drift), drift.device)), 1)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """InfoNCE over the global batch: this rank's queries against every rank's passages (and hard negatives).

        DDP averages the ranks' gradients, so each rank's loss is the sum over its queries times the number of
        ranks over the global number of queries: the ranks' average is then the mean over all queries, and its
        gradient the one a single device would compute on the whole batch."""
        queries, passages, *negatives = embeddings
        rank, size = world()
        counts = row_counts(len(queries), queries.device)
        hard = gather_rows(torch.cat(negatives), [c * len(negatives) for c in counts]) if negatives else None
        loss = info_nce(queries, gather_rows(passages, counts), self.scale, hard, first_target=sum(counts[:rank]))
        return loss * (len(queries) * size / sum(counts))

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "anchor_weight": self.anchor_weight}
