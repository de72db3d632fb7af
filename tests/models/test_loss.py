from __future__ import annotations

import math

import pytest
import torch

from xling.models.training.loss import InfoNCELoss, info_nce


def test_info_nce_equals_a_hand_computed_value() -> None:
    # Orthogonal unit vectors: q1.p1 = 1, q1.p2 = 0; q2.p1 = 0.6, q2.p2 = 0.8 (cosines).
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    passages = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # the loss normalises: [0, 2] -> [0, 1]
    scale = 20.0
    row1 = -math.log(math.exp(20 * 1.0) / (math.exp(20 * 1.0) + math.exp(20 * 0.0)))
    row2 = -math.log(math.exp(20 * 0.8) / (math.exp(20 * 0.6) + math.exp(20 * 0.8)))
    assert info_nce(queries, passages, scale).item() == pytest.approx((row1 + row2) / 2, rel=1e-5)


def test_hard_negatives_join_every_row() -> None:
    queries = torch.tensor([[1.0, 0.0]])
    passages = torch.tensor([[1.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    assert info_nce(queries, passages, 2.0, negative).item() == pytest.approx(expected, rel=1e-5)
    assert info_nce(queries, passages, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_flow_to_both_sides() -> None:
    torch.manual_seed(0)
    queries = torch.randn(4, 8, requires_grad=True)
    passages = torch.randn(4, 8, requires_grad=True)
    info_nce(queries, passages).backward()
    assert queries.grad is not None and passages.grad is not None
    assert queries.grad.abs().sum() > 0 and passages.grad.abs().sum() > 0


def test_module_runs_the_model_on_each_column() -> None:
    class Embed(torch.nn.Module):
        def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"sentence_embedding": features["x"]}

    q = {"x": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    p = {"x": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    loss = InfoNCELoss(Embed(), scale=5.0)
    assert loss([q, p], None).item() == pytest.approx(info_nce(q["x"], p["x"], 5.0).item())
    assert loss.get_config_dict() == {"scale": 5.0, "anchor_weight": 0.0}


class _Column(torch.nn.Module):
    """A stand-in encoder: the embedding is the feature "x" times a factor (the anchor: the base's factor)."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": features["x"] * self.factor}


def test_anchor_adds_the_mean_drift_of_the_anchored_texts_only() -> None:
    q = {"x": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
    p = {"x": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])}
    student, base = _Column(torch.tensor([1.0, 2.0])), _Column(torch.tensor([1.0, 1.0]))
    loss = InfoNCELoss(student, scale=5.0, anchor=base, anchor_weight=0.5)
    contrastive = info_nce(q["x"] * student.factor, p["x"] * student.factor, 5.0).item()
    # Row 1: [0, 2] vs [0, 1], cosine 1 on both sides. Row 2: query [1, 2] vs [1, 1], passage [1, -2] vs [1, -1].
    moved = 1 - (1 + 2) / (math.sqrt(5) * math.sqrt(2))
    # labels: [query anchored, passage anchored] per row; row 0 not at all, row 1's query only, row 2 both.
    labels = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert loss([q, p], labels).item() == pytest.approx(contrastive + 0.5 * (0 + moved + moved) / 3, rel=1e-5)
    only_passages = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # row 0 both: two texts that did not move
    expected = contrastive + 0.5 * (0 + 0 + 0 + moved) / 4
    assert loss([q, p], only_passages).item() == pytest.approx(expected, rel=1e-5)
    assert loss([q, p], torch.zeros(3, 2)).item() == pytest.approx(contrastive, rel=1e-5)
    assert loss.get_config_dict() == {"scale": 5.0, "anchor_weight": 0.5}


def test_anchor_needs_a_model_and_a_non_negative_weight() -> None:
    column = _Column(torch.ones(2))
    with pytest.raises(ValueError, match="needs an anchor"):
        InfoNCELoss(column, anchor_weight=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        InfoNCELoss(column, anchor=column, anchor_weight=-1.0)
