"""Batch-chunked recomputation (``recompute_chunks``): exact gradients, BN statistics once, less memory."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from memsv_cli.cli import main
from memsv_cli.errors import MemsvError
from memsv_cli.models import get_model
from memsv_cli.models import reversible as rv
from memsv_cli.models.backbone import MODEL_PER_SAMPLE, scaled_chunks
from memsv_cli.models.chunked import capture_bn_stats, chunkable, chunked_vjp
from memsv_cli.models.dfresnet import dfresnet_parts, inverted_bottleneck
from memsv_cli.models.resnet import resnet_parts
from memsv_cli.profile import StepSetup, measure_step
from memsv_cli.profile.fake import fake_cpu

FEAT = 16


def _loss(out: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out * weights).sum() + out.square().sum()


def _max_rel_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """As tests/test_reversible.py: per-tensor relative error with a floor of 1e-3 of the largest norm
    (gradients that are zero in exact arithmetic are pure rounding noise)."""
    floor = 1e-3 * max(float(r.norm()) for r in ref)
    return max(float((g - r).norm()) / max(float(r.norm()), floor) for g, r in zip(got, ref, strict=True))


def _run(model: nn.Module, feats: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One training step's gradients (input first) and the buffers after it."""
    x = feats.clone().requires_grad_(True)
    _loss(model(x)).backward()
    return [x.grad, *(p.grad for p in model.parameters())], list(model.buffers())


@pytest.mark.parametrize("name", ["rev_resnet50", "fullrev_resnet50", "rev_dfresnet56", "fullrev_dfresnet56"])
def test_chunked_gradients_and_statistics_equal_unchunked_and_autograd(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, feat_dim=FEAT, embed_dim=6, base_width=4).double()
    plain = copy.deepcopy(model)
    plain.reversible_backward = False
    feats = torch.randn(5, 19, FEAT, dtype=torch.float64)  # batch 5: not divisible by 2 or 4
    grads_ref, bufs_ref = _run(plain, feats)
    grads_1, bufs_1 = _run(copy.deepcopy(model), feats)
    for chunks in (3, 8):  # scaled per layer (3: 3/2/1/1 by stage, 8: 8/4/2/1): mixed K in one model
        chunked = get_model(name, feat_dim=FEAT, embed_dim=6, base_width=4, recompute_chunks=chunks).double()
        chunked.load_state_dict(model.state_dict())
        grads, bufs = _run(chunked, feats)
        assert all(g is not None for g in grads)
        assert _max_rel_error(grads, grads_ref) <= 1e-9
        assert _max_rel_error(grads, grads_1) <= 1e-9
        # Running statistics and counters: updated once, by the forward pass, as without chunks.
        for b, b_ref, b_1 in zip(bufs, bufs_ref, bufs_1, strict=True):
            assert torch.equal(b, b_1) and torch.equal(b, b_ref)
        assert all(int(b) == 1 for b in bufs if b.dim() == 0)


def test_chunks_scale_with_feature_map_size_largest_maps_get_k() -> None:
    def runs(ks: list[int]) -> list[list[int]]:  # [[K, how many consecutive units], ...]
        out: list[list[int]] = []
        for k in ks:
            if out and out[-1][0] == k:
                out[-1][1] += 1
            else:
                out.append([k, 1])
        return out

    stem, units = dfresnet_parts(233, 32)
    stem_k, unit_k = scaled_chunks(units, 32, 4)
    # stage 1 (32 ch, full resolution) and the stage-2 down-sampling layer that reads it: 4;
    # stage 2 (64 ch at 1/4 of the positions) and the stage-3 down-sampling layer: 2; the rest: 1.
    assert stem_k == 4 and runs(unit_k) == [[4, 5], [2, 9], [1, 67]]
    assert scaled_chunks(units, 32, 1) == (1, [1] * len(units))
    _, units = resnet_parts(293, 32)  # Bottleneck stage 1 carries 128 channels: the 32-channel stem gets 2
    stem_k, unit_k = scaled_chunks(units, 32, 8)
    assert stem_k == 2 and runs(unit_k) == [[8, 11], [4, 20], [2, 64], [1, 2]]
    model = get_model("rev_dfresnet56", base_width=4, recompute_chunks=4)
    chains = [m.recompute_chunks for m in model.modules() if isinstance(m, rv.ReversibleChain)]
    assert chains == [(4, 4, 4), (2, 2, 2), (1,) * 9, (1, 1, 1)]
    assert model.stem.recompute_chunks == 4
    fullrev = get_model("fullrev_dfresnet56", recompute_chunks=4)
    (chain,) = [m for m in fullrev.modules() if isinstance(m, rv.ReversibleChain)]
    assert chain.recompute_chunks == tuple(scaled_chunks(dfresnet_parts(56, 32)[1], 32, 4)[1])


def test_chunked_vjp_matches_autograd_for_one_sample_chunks() -> None:
    f = inverted_bottleneck(3).branch.double()
    for m in f.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = f(x)
    g = torch.randn_like(y)
    ref = torch.autograd.grad(y, [x, *f.parameters()], g)
    with capture_bn_stats(f) as stats:
        f(x)
    gx, grads = chunked_vjp(f, x.detach(), g, list(f.parameters()), stats, chunks=5)
    assert sorted(s.level for s in stats.values()) == [1, 2, 3]
    assert _max_rel_error([gx, *grads], list(ref)) <= 1e-12


def test_branches_with_random_or_unknown_layers_keep_the_unchunked_path() -> None:
    assert chunkable(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
    # memsv's Conv2d (thin convolutions in channels_last on CPU) is the model's own per-sample layer
    assert not chunkable(inverted_bottleneck(4).branch)
    assert chunkable(inverted_bottleneck(4).branch, MODEL_PER_SAMPLE)
    # The model's own containers count only where the owner names them (chunked.py knows no models).
    assert not chunkable(inverted_bottleneck(4)) and chunkable(inverted_bottleneck(4), MODEL_PER_SAMPLE)
    assert not chunkable(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Dropout(0.5)))
    assert not chunkable(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True)))
    results = []
    for chunks in (1, 3):
        torch.manual_seed(3)
        f = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5))
        chain = rv.ReversibleChain([rv.HalfStep(f, 4, 4, 4)], recompute_chunks=chunks).double()
        x = torch.randn(4, 4, 6, 6, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(11)
        a, b = chain(x, x)
        (a.sum() + (b * b).sum()).backward()
        results.append([x.grad, *(p.grad for p in chain.parameters())])
    assert _max_rel_error(results[1], results[0]) <= 1e-12


def test_chunked_chain_leaves_caller_tensors_alone() -> None:
    steps = [
        rv.HalfStep(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), 4, 4, 4),
        rv.HalfStep(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)), 4, 6, 4),
    ]
    chain = rv.ReversibleChain(steps, recompute_chunks=2).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    x_copy = x.detach().clone()
    a, b = chain(x, x)
    a_copy, b_copy = a.detach().clone(), b.detach().clone()
    grad_a, grad_b = torch.ones_like(a), torch.full_like(b, 2.0)
    torch.autograd.backward([a, b], [grad_a, grad_b])
    assert torch.equal(x.detach(), x_copy)
    assert torch.equal(a.detach(), a_copy) and torch.equal(b.detach(), b_copy)
    assert torch.equal(grad_a, torch.ones_like(a)) and torch.equal(grad_b, torch.full_like(b, 2.0))


def test_chunked_recomputation_under_bf16_autocast_stays_close() -> None:
    torch.manual_seed(0)
    model = get_model("fullrev_resnet18", feat_dim=FEAT, embed_dim=6, base_width=4)
    chunked = get_model("fullrev_resnet18", feat_dim=FEAT, embed_dim=6, base_width=4, recompute_chunks=2)
    chunked.load_state_dict(model.state_dict())
    reference = copy.deepcopy(model)
    feats = torch.randn(4, 24, FEAT)
    results = []
    for m, bf16 in ((model, True), (chunked, True), (reference, False)):
        x = feats.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(x)
        _loss(out.float()).backward()
        results.append([x.grad, *(p.grad for p in m.parameters())])
    assert all(g.dtype == torch.float32 for g in results[1])
    # The chunked BN runs in fp32 where the native one rounds to bf16: far inside bf16's own error.
    bf16_noise = _max_rel_error(results[0], results[2])
    assert _max_rel_error(results[1], results[0]) <= min(0.1 * bf16_noise, 0.05)
    assert _max_rel_error(results[1], results[2]) <= 1.1 * bf16_noise


def test_recompute_chunks_is_validated() -> None:
    with pytest.raises(MemsvError, match="only to rev_/fullrev_"):
        get_model("resnet18", recompute_chunks=2)
    with pytest.raises(MemsvError, match="positive integer"):
        get_model("rev_resnet18", recompute_chunks=0)


def test_shares_memory_sees_views_of_fake_tensors() -> None:
    # data_ptr() is 0 for every fake tensor; the storage identity is not, so meta estimates take the
    # same in-place paths as a real step.
    with fake_cpu():
        x, y = torch.empty(4, 6), torch.empty(4, 6)
        assert rv._shares_memory(x, x[:, 2:]) and not rv._shares_memory(x, y)
    x, y = torch.empty(4, 6), torch.empty(4, 6)
    assert rv._shares_memory(x, x[:, 2:]) and not rv._shares_memory(x, y)


def test_chunks_lower_the_measured_cpu_peak() -> None:
    setup = StepSetup(batch_size=8, frames=32, feat_dim=FEAT, num_speakers=20, embed_dim=8, optimizer="sgd")
    peaks = {}
    for chunks in (1, 4):

        def build(chunks: int = chunks) -> nn.Module:
            return get_model(
                "rev_dfresnet56", feat_dim=FEAT, embed_dim=8, base_width=2, recompute_chunks=chunks
            )

        peaks[chunks] = measure_step(build, setup, "cpu")
    assert peaks[4].total < 0.9 * peaks[1].total
    assert peaks[4].activations < peaks[1].activations


def test_profile_memory_cli_passes_recompute_chunks_to_the_measured_model_only(
    capsys: pytest.CaptureFixture,
) -> None:
    args = [
        "profile-memory",
        "--batch-size",
        "4",
        "--frames",
        "16",
        "--feat-dim",
        "16",
        "--num-speakers",
        "8",
    ]
    args += ["--embed-dim", "8", "--base-width", "2", "--device", "meta", "--recompute-chunks", "2"]
    main([*args, "--model", "rev_resnet18", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["setup"]["recompute_chunks"] == 2 and out["baseline"]["model"] == "resnet18"
    with pytest.raises(SystemExit):
        main([*args, "--model", "resnet18"])
    assert "recompute_chunks applies only to rev_/fullrev_" in capsys.readouterr().err
