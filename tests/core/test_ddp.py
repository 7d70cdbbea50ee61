"""Real 2-process DDP (gloo, CPU): the mean over ranks of each rank's local loss and the DDP-averaged
parameter gradients equal the single-process loss and gradients of the full batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from alignkit.core.distributed import gather_no_grad, gather_with_grad, local_row_offset, rank, world_size
from alignkit.core import losses  # noqa: F401  (registers the losses)
from alignkit.core.registry import LOSSES

pytestmark = pytest.mark.slow

WORLD, LOCAL_BATCH, IN_DIM, EMBED_DIM = 2, 6, 10, 5
CASES: Dict[str, Dict[str, Any]] = {
    "clip": dict(loss="clip", params={}),
    "clip_chunked_smoothed": dict(loss="clip", params={"chunk_size": 4, "label_smoothing": 0.1}),
    "clip_distilled": dict(loss="clip", params={"chunk_size": 5}, teacher=True),
    "siglip": dict(loss="siglip", params={"init_logit_bias": -2.0}),
    "siglip_chunked": dict(loss="siglip", params={"chunk_size": 4}),
    "multi_positive": dict(loss="multi_positive", params={}, groups=True),
    "multi_positive_supcon_chunked": dict(loss="multi_positive", params={"mode": "supcon", "chunk_size": 4},
                                          groups=True),
}


class Pair(nn.Module):
    """One shared linear tower for both sides and the loss module (whose temperature/bias DDP also averages)."""

    def __init__(self, case: Dict[str, Any]):
        super().__init__()
        torch.manual_seed(0)
        self.tower = nn.Linear(IN_DIM, EMBED_DIM)
        self.teacher = nn.Linear(IN_DIM, EMBED_DIM).requires_grad_(False) if case.get("teacher") else None
        self.loss = LOSSES.build(case["loss"], **case["params"])

    def forward(self, xa: Tensor, xb: Tensor, groups: Optional[Tensor]) -> Tensor:
        extras: Dict[str, Any] = {}
        if groups is not None:
            extras.update(groups_a=groups, groups_b=groups)
        if self.teacher is not None:
            extras.update(teacher_a=F.normalize(self.teacher(xa), dim=-1),
                          teacher_b=F.normalize(self.teacher(xb), dim=-1), alpha=0.4)
        a, b = F.normalize(self.tower(xa), dim=-1), F.normalize(self.tower(xb), dim=-1)
        return self.loss(a, b, **extras).loss


def full_batch():
    gen = torch.Generator().manual_seed(1)
    xa = torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=gen)
    xb = xa + 0.5 * torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=gen)
    groups = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5, 1, 6, 6, 7])  # group 1 and 4 span both ranks
    return xa, xb, groups


def run_rank(local_rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=local_rank, world_size=WORLD)
    try:
        xa, xb, groups = full_batch()
        rows = slice(local_row_offset(LOCAL_BATCH), local_row_offset(LOCAL_BATCH) + LOCAL_BATCH)
        results: Dict[str, Any] = {"rank": rank(), "world_size": world_size()}
        x = torch.arange(3.0).view(1, 3).repeat(2, 1) + 10 * rank()
        results["gathered"] = gather_no_grad(x)
        results["gather_grad"] = torch.autograd.grad((gather_with_grad(x.requires_grad_()) ** 2).sum(), x)[0]
        for name, case in CASES.items():
            model = Pair(case)
            ddp = DistributedDataParallel(model)
            loss = ddp(xa[rows], xb[rows], groups[rows] if case.get("groups") else None)
            loss.backward()
            results[name] = {"loss": loss.detach(),
                             "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}}
        torch.save(results, Path(out_dir) / f"rank{local_rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(run_rank, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_gather_helpers_concatenate_in_rank_order(ranks):
    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world_size"] == WORLD
        torch.testing.assert_close(res["gathered"], torch.cat([torch.arange(3.0).view(1, 3).repeat(2, 1) + 10 * k
                                                               for k in range(WORLD)]))
        # d/dx_r of sum over ranks of sum(X**2) = WORLD * 2 x_r: every rank's gradient reaches the owner
        torch.testing.assert_close(res["gather_grad"], WORLD * 2 * (torch.arange(3.0).view(1, 3).repeat(2, 1) + 10 * r))


@pytest.mark.parametrize("name", list(CASES))
def test_ddp_equals_full_batch(ranks, name):
    case = CASES[name]
    xa, xb, groups = full_batch()
    model = Pair(case)
    loss = model(xa, xb, groups if case.get("groups") else None)
    loss.backward()
    mean_loss = sum(res[name]["loss"] for res in ranks) / WORLD
    torch.testing.assert_close(mean_loss, loss.detach(), atol=1e-5, rtol=0)
    for res in ranks:
        got = res[name]["grads"]
        for param_name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(got[param_name], p.grad, atol=1e-5, rtol=0,
                                           msg=lambda m: f"{name} {param_name}: {m}")
