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
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(queries: Tensor, passages: Tensor, scale: float = 20.0, hard_negatives: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of each query against every passage in the batch (its own is the target).

    queries, passages: (B, d); hard_negatives: (B*h, d) extra candidates shared by all queries.
    """
    assert queries.shape == passages.shape, (queries.shape, passages.shape)
    candidates = passages if hard_negatives is None else torch.cat([passages, hard_negatives])
    logits = scale * F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    targets = torch.arange(queries.shape[0], device=queries.device)
    return F.cross_entropy(logits, targets)


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
            if bool(keep.any()):
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
        return torch.cat(drifts).mean()

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        queries, passages, *negatives = embeddings
        hard = torch.cat(negatives) if negatives else None
        return info_nce(queries, passages, self.scale, hard)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "anchor_weight": self.anchor_weight}
