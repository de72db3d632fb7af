"""InfoNCE with in-batch negatives over cosine similarity x scale (scale 20 = temperature 0.05)."""

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


class InfoNCELoss(nn.Module):
    """sentence-transformers loss: columns are (query, passage[, hard negative ...])."""

    def __init__(self, model: nn.Module, scale: float = 20.0) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        queries, passages, *negatives = embeddings
        hard = torch.cat(negatives) if negatives else None
        return info_nce(queries, passages, self.scale, hard)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}
