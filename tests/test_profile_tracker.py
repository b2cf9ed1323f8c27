"""StorageTracker and the step profiler on small hand-made models (no dependency on memsv models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memsv_cli.profile.memory import measure_step
from memsv_cli.profile.step import OPTIMIZER_KWARGS, StepSetup
from memsv_cli.profile.tracker import StorageTracker, allocated_bytes


def torch_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """32-bit torch.optim twins, so these tests do not depend on memsv_cli.optim."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, **OPTIMIZER_KWARGS[name])


class _Recompute(torch.autograd.Function):
    """A run of residual half-steps ``(a, b) -> (b, a + f(b))`` that keeps only its outputs and rebuilds
    each step's input in backward, like the reversible models."""

    @staticmethod
    def forward(ctx, fs, a, b, *params):  # noqa: ANN001
        with torch.no_grad():
            for f in fs:
                a, b = b, a + f(b)
        ctx.fs = fs
        ctx.save_for_backward(a, b)
        return a.clone(), b.clone()

    @staticmethod
    def backward(ctx, ga, gb):  # noqa: ANN001
        c, d = ctx.saved_tensors
        params = [p for f in ctx.fs for p in f.parameters()]
        grads = {id(p): torch.zeros_like(p) for p in params}
        for f in reversed(ctx.fs):
            b = c.detach().requires_grad_(True)
            with torch.enable_grad():
                fb = f(b)
            a = d - fb.detach()
            own = list(f.parameters())
            gb_in, *gp = torch.autograd.grad(fb, [b, *own], gb)
            for p, g in zip(own, gp, strict=True):
                grads[id(p)] += g
            ga, gb = gb, ga + gb_in
            c, d = a, b.detach()
        return (None, ga, gb, *(grads[id(p)] for p in params))


class TinyNet(nn.Module):
    """(B, T, F) -> (B, E): conv stem, ``depth`` conv-BN-ReLU branches (plain or recomputed), mean+std
    pooling over time, linear embedding."""

    def __init__(
        self,
        feat_dim: int = 16,
        channels: int = 8,
        embed_dim: int = 32,
        depth: int = 4,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        self.recompute = recompute
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.fs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
            )
            for _ in range(depth)
        )
        self.embed = nn.Linear(2 * channels * feat_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.unsqueeze(1))  # (B, C, T, F)
        if self.recompute:
            a, b = _Recompute.apply(list(self.fs), x, x, *self.fs.parameters())
        else:
            a, b = x, x
            for f in self.fs:
                a, b = b, a + f(b)
        x = ((a + b) / 2).transpose(2, 3).flatten(1, 2)  # (B, C*F, T)
        return self.embed(torch.cat([x.mean(-1), x.std(-1)], 1))


SMALL = StepSetup(batch_size=4, frames=32, feat_dim=16, num_speakers=50, embed_dim=32)


def test_allocated_bytes_rounds_to_cuda_blocks() -> None:
    assert [allocated_bytes(n) for n in (0, 1, 512, 513, 4096)] == [0, 512, 512, 1024, 4096]


def test_tracker_follows_allocation_free_and_peak() -> None:
    with StorageTracker() as tracker:
        a = torch.ones(1000)  # 4000 B -> 4096
        b = torch.ones(100)  # 400 B -> 512
        view = a[10:]  # shares a's storage: no new bytes
        assert tracker.live_bytes == 4096 + 512
        del a
        assert tracker.live_bytes == 4096 + 512  # the view keeps the storage alive
        del view
        assert tracker.live_bytes == 512
        c = b * 2
        assert tracker.live_bytes == 1024
    assert tracker.peak_bytes == 4096 + 512 + 0
    del b, c
    assert tracker.live_bytes == 0


def test_tracker_splits_the_peak_by_tag_and_sums_to_it() -> None:
    with StorageTracker() as tracker:
        w = torch.zeros(256)  # 1024 B
        tracker.tag(w, "parameters")
        tracker.reset_peak()
        tmp = torch.zeros(512)  # 2048 B, untagged
        saved = torch.zeros(128)  # 512 B
        tracker.tag(saved, "activations")
        del tmp
        later = torch.zeros(64)  # after the peak: not part of it
    parts = tracker.bytes_at_peak(("parameters", "activations"))
    assert parts == {"parameters": 1024, "activations": 512, "other": 2048}
    assert sum(parts.values()) == tracker.peak_bytes == 3584
    del w, saved, later


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_meta_estimate_matches_cpu_measurement(optimizer: str, precision: str) -> None:
    setup = StepSetup(**{**SMALL.__dict__, "optimizer": optimizer, "precision": precision})
    cpu = measure_step(lambda: TinyNet(depth=3), setup, "cpu", torch_optimizer)
    meta = measure_step(lambda: TinyNet(depth=3), setup, "meta", torch_optimizer)
    assert abs(meta.total - cpu.total) <= 0.10 * cpu.total
    assert meta == cpu  # same accounting on both: here even identical


def test_components_sum_to_the_peak_and_match_analytic_sizes() -> None:
    model = TinyNet(depth=2)
    n_params = sum(allocated_bytes(p.numel() * 4) for p in model.parameters())
    head = allocated_bytes(SMALL.num_speakers * SMALL.embed_dim * 4)
    buffers = sum(allocated_bytes(b.numel() * b.element_size()) for b in model.buffers())
    sgd = measure_step(lambda: TinyNet(depth=2), SMALL, "cpu", torch_optimizer)
    adam = measure_step(
        lambda: TinyNet(depth=2), StepSetup(**{**SMALL.__dict__, "optimizer": "adam"}), "cpu", torch_optimizer
    )
    b = sgd.as_dict()
    assert sum(b[k] for k in b if k != "total") == b["total"]
    assert sgd.parameters == n_params + head + buffers
    assert sgd.optimizer_states == n_params + head  # one momentum buffer per parameter
    # Adam: exp_avg + exp_avg_sq per parameter, plus a 0-d fp32 step counter (one 512 B block) each.
    n_tensors = len(list(model.parameters())) + 1
    assert adam.optimizer_states == 2 * (n_params + head) + 512 * n_tensors
    assert 0 < sgd.gradients <= n_params + head
    assert sgd.activations > 0


def test_activations_grow_with_batch_and_depth_for_plain_blocks() -> None:
    act = {
        (batch, depth): measure_step(
            lambda d=depth: TinyNet(depth=d),
            StepSetup(**{**SMALL.__dict__, "batch_size": batch}),
            "meta",
            torch_optimizer,
        ).activations
        for batch in (4, 8)
        for depth in (2, 6)
    }
    assert act[(4, 6)] > 1.5 * act[(4, 2)]
    assert act[(8, 2)] > 1.8 * act[(4, 2)]


def test_recomputed_blocks_keep_activation_bytes_independent_of_depth() -> None:
    def acts(depth: int, recompute: bool) -> int:
        return measure_step(
            lambda: TinyNet(depth=depth, recompute=recompute), SMALL, "cpu", torch_optimizer
        ).activations

    assert acts(4, True) == acts(12, True)
    assert acts(8, False) > 2 * acts(8, True)


def test_recomputing_model_has_the_same_gradients_as_plain_autograd() -> None:
    """Guards the helper above: a broken _Recompute would make the depth test meaningless."""
    torch.manual_seed(1)
    plain = TinyNet(depth=3)
    rec = TinyNet(depth=3, recompute=True)
    rec.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 16)
    plain(x).square().sum().backward()
    rec(x).square().sum().backward()
    for p, q in zip(plain.parameters(), rec.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
