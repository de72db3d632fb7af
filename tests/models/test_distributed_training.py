"""Training on several processes as one (torch.distributed, gloo on CPU): two ranks holding halves of a global
batch give the loss and the gradients one process gives on the whole batch, and the ranks split each global
batch, so a monolingual batch stays in one language across them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate.data_loader import BatchSamplerShard
from torch import Tensor, nn

from tests.synthetic import make_groups, write_jsonl
from xling.models.data.parallel import ParallelGroup, all_pairs
from xling.models.training.loss import InfoNCELoss
from xling.models.training.samplers import HybridBatchSampler, RankSlices

GLOBAL_ROWS = 7  # odd: the ranks hold 4 and 3 rows
ANCHORED_ROWS = 3  # all on rank 0: rank 1 has nothing to anchor and must still take part


class TinyEncoder(nn.Module):
    """What InfoNCELoss needs of a sentence-transformers model: features in, "sentence_embedding" out."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"sentence_embedding": self.proj(features["x"])}


def global_batch() -> tuple[list[Tensor], Tensor]:
    """Query, passage and hard-negative columns, and anchor labels (rows x columns)."""
    generator = torch.Generator().manual_seed(7)
    columns = [torch.randn(GLOBAL_ROWS, 6, generator=generator) for _ in range(3)]
    labels = torch.zeros(GLOBAL_ROWS, 3)
    labels[:ANCHORED_ROWS, :2] = 1.0
    return columns, labels


def loss_and_grads(rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
    model = TinyEncoder(seed=0)
    loss_fn = InfoNCELoss(model, scale=20.0, anchor=TinyEncoder(seed=1), anchor_weight=0.5)
    columns, labels = global_batch()
    loss = loss_fn([{"x": column[rows]} for column in columns], labels[rows])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def rank_main(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        sampler = RankSlices(FixedBatches([list(range(GLOBAL_ROWS))], GLOBAL_ROWS), rank, world)
        (mine,) = list(sampler)
        loss, grads = loss_and_grads(slice(mine[0], mine[-1] + 1))
        # What DistributedDataParallel does with the ranks' gradients (and the trainer with their losses).
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= world
        dist.all_reduce(loss)
        loss /= world
        if rank == 0:
            torch.save({"loss": loss, "grads": grads, "rows": len(mine)}, out)
    finally:
        dist.destroy_process_group()


class FixedBatches(HybridBatchSampler):
    """A sampler whose one epoch is the given batches (for the rank split alone)."""

    def __init__(self, batches: list[list[int]], batch_size: int) -> None:
        self._fixed = batches
        self.batch_size = batch_size
        self.epoch = 0

    def __iter__(self) -> Any:
        return iter(self._fixed)

    def plan(self, epoch: int) -> Any:
        from xling.models.training.samplers import PlannedBatch

        return [PlannedBatch("cross", rows) for rows in self._fixed]


def test_two_ranks_give_the_loss_and_gradients_of_one_process(tmp_path: Path) -> None:
    expected_loss, expected_grads = loss_and_grads(slice(None))
    out = tmp_path / "rank0.pt"
    mp.start_processes(rank_main, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, start_method="spawn")
    got: dict[str, Any] = torch.load(out)
    assert got["rows"] == 4  # rank 0 held 4 of the 7 rows, rank 1 the other 3
    torch.testing.assert_close(got["loss"], expected_loss, rtol=1e-5, atol=1e-6)
    assert got["grads"].keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without the gathered negatives each rank would score its queries against its own passages only: the
    # loss would differ, so the comparison above can fail.
    alone, _ = loss_and_grads(slice(0, 4))
    assert not torch.isclose(alone, expected_loss, atol=1e-3)


def multilingual_groups(n: int = 40) -> list[ParallelGroup]:
    langs = ("en", "de", "fr", "zh")
    return [ParallelGroup(f"g{i}", {x: f"q{i}{x}" for x in langs}, {x: f"p{i}{x}" for x in langs}) for i in range(n)]


@pytest.mark.parametrize("world", [2, 3])
def test_a_monolingual_batch_is_one_language_on_every_rank(world: int) -> None:
    groups = multilingual_groups()
    pairs = all_pairs(groups)
    sampler = HybridBatchSampler(groups, pairs, batch_size=12, alpha=0.5, seed=3)
    global_batches = list(sampler)
    parts = [list(RankSlices(sampler, rank, world)) for rank in range(world)]
    assert all(len(p) == len(global_batches) for p in parts)
    mono_seen = 0
    for step, batch in enumerate(global_batches):
        slices = [parts[rank][step] for rank in range(world)]
        assert [row for part in slices for row in part] == batch  # the ranks split the batch, nothing else
        assert max(map(len, slices)) - min(map(len, slices)) <= 1
        if all(pairs[row][1] == pairs[row][2] for row in batch):  # monolingual: query and passage language agree
            mono_seen += 1
            assert len({pairs[row][1] for row in batch}) == 1
    assert mono_seen > 0
    # What the split prevents: accelerate's default sharding hands each rank whole batches of its own, so the
    # ranks of one step train on different languages.
    default = [list(BatchSamplerShard(sampler, world, rank)) for rank in range(world)]
    mixed_steps = [
        step for step in range(min(map(len, default)))
        if len({pairs[default[rank][step][0]][1] for rank in range(world)}) > 1
    ]
    assert mixed_steps


def test_a_global_batch_smaller_than_the_ranks_is_refused() -> None:
    groups = multilingual_groups(4)
    with pytest.raises(ValueError, match="cannot be split"):
        RankSlices(HybridBatchSampler(groups, all_pairs(groups), batch_size=2), 0, 4)
    with pytest.raises(ValueError, match="rank 2"):
        RankSlices(HybridBatchSampler(groups, all_pairs(groups), batch_size=4), 2, 2)


def without_dropout(model: Path, out: Path) -> Path:
    """A copy of the model with dropout off: each rank draws its own dropout masks, which one process would not."""
    shutil.copytree(model, out)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    config.update({key: 0.0 for key in config if "dropout" in key})
    config_file.write_text(json.dumps(config))
    return out


def test_finetune_under_torchrun_trains_as_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """The real trainer, `xling finetune` under torchrun with two CPU ranks (gloo), against one process: the
    same loss at every logged step, and only rank 0 writes the version."""
    base = without_dropout(tiny_model, tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", make_groups(120, seed=0))
    args = ["finetune", "--data", str(data), "--base", str(base), "--max-steps", "12", "--batch-size", "16",
            "--val-fraction", "0.1", "--seed", "0"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("XLING_")}, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "xling.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "xling.cli", *args,
         "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("model version") == 1  # rank 1 trained too, but reports and writes nothing

    def curve(folder: str) -> list[tuple[int, float]]:
        return json.loads((tmp_path / folder / "xling.json").read_text())["training"]["loss_curve"]

    one_curve, two_curve = curve("one"), curve("two")
    assert [step for step, _ in two_curve] == [step for step, _ in one_curve] and len(one_curve) >= 4
    for (step, expected), (_, got) in zip(one_curve, two_curve, strict=True):
        assert got == pytest.approx(expected, rel=1e-4), f"step {step}"
