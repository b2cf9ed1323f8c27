"""DDP (gloo, 2 CPU processes): reversible gradients reach the reducer's hooks and get all-reduced."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from memsv_cli.models import get_model


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = get_model("rev_resnet18", feat_dim=16, embed_dim=4, base_width=4).double()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        feats = torch.randn(4, 19, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        ddp(feats[2 * rank : 2 * rank + 2]).square().sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_all_reduces_reversible_gradients(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Reference: the same function with plain autograd, each half-batch alone (BN statistics are local
    # to a rank under DDP), gradients averaged as DDP does.
    torch.manual_seed(0)
    ref = get_model("rev_resnet18", feat_dim=16, embed_dim=4, base_width=4).double()
    ref.reversible_backward = False
    feats = torch.randn(4, 19, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for rank in range(2):
        model = copy.deepcopy(ref)
        model(feats[2 * rank : 2 * rank + 2]).square().sum().backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad / 2
    for name, exp in expected.items():
        for rank in range(2):
            torch.testing.assert_close(got[rank][name], exp, rtol=1e-9, atol=1e-12, msg=name)
