"""The reversible core: exact gradients, BatchNorm statistics, RNG, autocast, memory, no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memsv_cli.models import get_model, reconstruction_error, saved_activation_bytes
from memsv_cli.models import reversible as rv
from memsv_cli.profile.tracker import StorageTracker

FEAT = 16
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def _pair(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, nn.Module]:
    """The reversible model and an identical copy that uses plain autograd."""
    model = get_model(name, feat_dim=FEAT, embed_dim=6, base_width=4).to(dtype)
    plain = copy.deepcopy(model)
    plain.reversible_backward = False
    return model, plain


def _loss(out: torch.Tensor) -> torch.Tensor:
    # A loss whose gradient differs per output element, so every path gets a distinct signal.
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out * weights).sum() + out.square().sum()


def _grads(model: nn.Module, feats: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = feats.clone().requires_grad_(True)
    out = model(x)
    _loss(out).backward()
    return out.detach(), [x.grad, *(p.grad for p in model.parameters())]


def _max_rel_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """Largest per-tensor ``|got - ref| / |ref|``. Some gradients are zero in exact arithmetic (e.g. a
    BN bias followed by another BN), so their reference is rounding noise; the norm floor of 1e-3 of
    the largest gradient keeps those from dividing noise by noise."""
    floor = 1e-3 * max(float(r.norm()) for r in ref)
    return max(float((g - r).norm()) / max(float(r.norm()), floor) for g, r in zip(got, ref, strict=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("prefix", ["rev_", "fullrev_"])
@pytest.mark.parametrize("base", ["resnet18", "resnet50", "dfresnet56"])
def test_rev_gradients_match_autograd(base: str, prefix: str, dtype: torch.dtype) -> None:
    model, plain = _pair(prefix + base, dtype)
    feats = torch.randn(3, 19, FEAT, dtype=dtype)
    out, grads = _grads(model, feats)
    out_ref, grads_ref = _grads(plain, feats)
    assert len(grads) == len(grads_ref) == 1 + len(list(model.parameters()))
    assert all(g is not None for g in grads)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)  # same ops in the same order
    assert _max_rel_error(grads, grads_ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("name", ["rev_resnet18", "fullrev_resnet50", "rev_dfresnet56", "fullrev_dfresnet56"])
def test_batchnorm_statistics_identical_to_plain_path_after_three_steps(name: str) -> None:
    model, plain = _pair(name)
    for m in (model, plain):
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            opt.zero_grad()
            _loss(m(torch.randn(3, 19, FEAT, generator=gen, dtype=torch.float64))).backward()
            opt.step()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(int(bn.num_batches_tracked) == 3 for bn in bns)
    for (key, got), ref in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        if "num_batches" in key:
            assert torch.equal(got, ref), key
        elif "running" in key:
            assert float((got - ref).norm()) <= 1e-9 * float(ref.norm()), key


def _act_bytes(name: str) -> int:
    model = get_model(name, feat_dim=FEAT, base_width=4).train()
    return saved_activation_bytes(model, torch.randn(2, 48, FEAT))


def test_type1_activation_memory_grows_with_stages_not_blocks() -> None:
    rev101, rev293 = _act_bytes("rev_resnet101"), _act_bytes("rev_resnet293")
    assert abs(rev293 - rev101) <= 0.10 * rev101
    assert _act_bytes("resnet293") > 2.5 * _act_bytes("resnet101")  # the vanilla one does grow


def test_type2_activation_memory_is_independent_of_depth() -> None:
    for shallow, deep in (("resnet101", "resnet293"), ("dfresnet56", "dfresnet233")):
        small, big = _act_bytes("fullrev_" + shallow), _act_bytes("fullrev_" + deep)
        assert abs(big - small) <= 0.05 * small
        assert 2 * small < _act_bytes(shallow)


def test_reversible_saves_activations_against_vanilla() -> None:
    vanilla = _act_bytes("resnet34")
    assert 3 * _act_bytes("rev_resnet34") <= vanilla
    assert 8 * _act_bytes("fullrev_resnet34") <= vanilla
    plain = get_model("fullrev_resnet34", feat_dim=FEAT, base_width=4, reversible_backward=False)
    assert saved_activation_bytes(plain.train(), torch.randn(2, 48, FEAT)) > 4 * _act_bytes(
        "fullrev_resnet34"
    )


def test_saved_activation_bytes_counts_a_shared_storage_once() -> None:
    x = torch.randn(1000, dtype=torch.float64)

    class Twice(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * t  # mul saves both operands: the same storage

    assert saved_activation_bytes(Twice(), x.requires_grad_()) == 8000
    linear = nn.Linear(1000, 3, bias=False).double()  # saves its input, not its weight
    assert saved_activation_bytes(linear, x.detach()[None]) == 8000


def test_parameters_reach_autograd_grad_and_accumulate_hooks() -> None:
    model, plain = _pair("fullrev_resnet18")
    feats = torch.randn(2, 17, FEAT, dtype=torch.float64)
    params = list(model.parameters())
    got = torch.autograd.grad(_loss(model(feats)), params)
    ref = torch.autograd.grad(_loss(plain(feats)), list(plain.parameters()))
    assert _max_rel_error(list(got), list(ref)) <= 1e-9
    fired: set[int] = set()
    for i, p in enumerate(params):  # what DDP's reducer relies on
        p.register_post_accumulate_grad_hook(lambda _p, i=i: fired.add(i))
    _loss(model(feats)).backward()
    assert fired == set(range(len(params)))


def _dropout_chain(backward: bool) -> rv.ReversibleChain:
    torch.manual_seed(3)
    steps = []
    for _ in range(3):
        f = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5))
        steps.append(rv.HalfStep(f, 4, 4, 4))
    steps.append(rv.HalfStep(nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.Dropout(0.3)), 4, 8, 4, (2, 2)))
    return rv.ReversibleChain(steps, reversible_backward=backward).double()


def test_random_state_is_replayed_on_recomputation() -> None:
    results = []
    for backward in (True, False):
        chain = _dropout_chain(backward)
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(11)
        a, b = chain(x, x)
        (a.sum() + (b * b).sum()).backward()
        after = torch.rand(3)  # the outer RNG continues as if nothing was recomputed
        results.append((x.grad, [p.grad for p in chain.parameters()], after))
    (gx, gp, after), (gx_ref, gp_ref, after_ref) = results
    assert _max_rel_error([gx, *gp], [gx_ref, *gp_ref]) <= 1e-9
    assert torch.equal(after, after_ref)


def test_replay_state_keeps_random_state_only_when_drawn_and_replays_it() -> None:
    x = torch.randn(2, 4, 6, 6)
    conv, dropout = nn.Conv2d(4, 4, 3, padding=1), nn.Dropout(0.5)
    state = rv.ReplayState.capture(x)
    conv(x)
    assert state.after_forward(x).cpu_rng is None  # dropout-free: nothing stored
    state = rv.ReplayState.capture(x)
    mask = dropout(torch.ones_like(x))
    state = state.after_forward(x)
    assert state.cpu_rng is not None and not state.autocast_enabled
    expected_after = torch.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16), state.replay():
        assert not torch.is_autocast_enabled("cpu")  # the forward's autocast (off), not the outer one
        assert torch.equal(dropout(torch.ones_like(x)), mask)
    assert torch.equal(torch.get_rng_state(), expected_after)  # the outer RNG continues unchanged


def test_autocast_bf16_runs_branches_in_bf16_and_keeps_fp32_streams() -> None:
    model, plain = _pair("fullrev_resnet18", torch.float32)
    reference = copy.deepcopy(plain)
    feats = torch.randn(2, 24, FEAT)
    chain = next(m for m in model.modules() if isinstance(m, rv.ReversibleChain))
    seen: list[torch.dtype] = []
    chain.register_forward_hook(lambda _m, _i, out: seen.extend(t.dtype for t in out))
    conv_dtypes: set[torch.dtype] = set()
    for conv in (m for m in chain.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_hook(lambda _m, _i, out: conv_dtypes.add(out.dtype))
    results = []
    for m in (model, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_grads(m, feats))
    _, grads_fp32 = _grads(reference, feats)
    assert seen == [torch.float32, torch.float32]
    assert conv_dtypes == {torch.bfloat16}  # in forward and in the recomputation
    (out, grads), (out_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    assert all(g.dtype == torch.float32 for g in grads[1:])
    # Rebuilt inputs differ from the originals by fp32 rounding, which bf16 branches can amplify; the
    # reversible path must stay well inside the error that bf16 itself makes against fp32.
    bf16_noise = _max_rel_error(grads_ref, grads_fp32)
    assert _max_rel_error(grads, grads_ref) <= min(0.25 * bf16_noise, 0.1)


def test_caller_tensors_are_neither_mutated_nor_freed() -> None:
    # Stride-1 widening steps (zero channels: R^-1 is a view) at both ends, so rebuilt tensors alias
    # the chain's outputs and gradients, which must still not be written; a partial-width step between.
    steps = [
        rv.HalfStep(nn.Conv2d(4, 4, 3, padding=1), 4, 4, 4),  # identity R: a and b are the caller's x
        rv.HalfStep(nn.Conv2d(4, 4, 3, padding=1), 4, 4, 4),
        rv.HalfStep(nn.Conv2d(4, 6, 3, padding=1), 4, 6, 4),
        rv.HalfStep(nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)), 6, 6, 6),
        rv.HalfStep(nn.Conv2d(4, 4, 3, padding=1), 4, 4, 6),
        rv.HalfStep(nn.Conv2d(6, 8, 1), 6, 8, 6),
    ]
    chain = rv.ReversibleChain(steps).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    x_copy = x.detach().clone()
    assert chain(x, x)[0].shape == (2, 8, 6, 6)
    a, b = chain(x, x)
    a_copy, b_copy = a.detach().clone(), b.detach().clone()
    grad_a, grad_b = torch.ones_like(a), torch.full_like(b, 2.0)
    torch.autograd.backward([a, b], [grad_a, grad_b])
    assert torch.equal(x.detach(), x_copy)
    assert torch.equal(a.detach(), a_copy) and torch.equal(b.detach(), b_copy)
    assert torch.equal(grad_a, torch.ones_like(a)) and torch.equal(grad_b, torch.full_like(b, 2.0))
    feats = torch.randn(2, 21, FEAT, dtype=torch.float64)
    feats_copy = feats.clone()
    model, _ = _pair("fullrev_dfresnet56")
    _loss(model(feats)).backward()
    assert torch.equal(feats, feats_copy)


def test_sequence_backward_rebuilds_inside_its_chains_outputs_and_gradients() -> None:
    # A ReversibleSequence merges its chain's outputs at once, so the chain's backward may write into
    # them and their gradients: same gradients, bit for bit, and two stream copies fewer at the peak.
    torch.manual_seed(3)
    steps = [
        rv.HalfStep(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)), 8, 8, 8)
        for _ in range(3)
    ]
    seq = rv.ReversibleSequence(rv.ReversibleChain(steps), 8).double()
    assert seq.chain.outputs_private
    x = torch.randn(4, 8, 16, 16, dtype=torch.float64)
    stream = x.numel() * x.element_size()
    grads, peaks = {}, {}
    for private in (True, False):
        seq.chain.outputs_private = private
        xi = x.clone().requires_grad_(True)
        with StorageTracker() as tracker:
            tracker.track(seq.parameters())
            seq(xi).pow(2).sum().backward()
        peaks[private] = tracker.peak_bytes
        grads[private] = [xi.grad, *(p.grad.clone() for p in seq.parameters())]
        seq.zero_grad(set_to_none=True)
    assert all(torch.equal(g, h) for g, h in zip(grads[True], grads[False], strict=True))
    assert peaks[True] <= peaks[False] - 2 * stream


def test_type2_transitions_unshuffle_into_the_dead_streams_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # A down-sampling half-step's backward writes the depth-to-space of each dead stream back over its
    # own memory: same gradients bit for bit, a lower peak than four fresh copies.
    torch.manual_seed(4)
    model = get_model("fullrev_resnet18", feat_dim=FEAT, embed_dim=6, base_width=4).double()
    feats = torch.randn(4, 32, FEAT, dtype=torch.float64)
    grads, peaks = {}, {}
    for in_place in (True, False):
        if not in_place:
            monkeypatch.setattr(rv.HalfStep, "unshuffle_scratch", lambda self, y, scratch: self.unshuffle(y))
        m = copy.deepcopy(model)
        with StorageTracker() as tracker:
            tracker.track(m.parameters())
            tracker.track(m.buffers())
            _loss(m(feats)).backward()
        peaks[in_place] = tracker.peak_bytes
        grads[in_place] = [p.grad for p in m.parameters()]
    assert all(torch.equal(g, h) for g, h in zip(grads[True], grads[False], strict=True))
    stream = 4 * 4 * FEAT * 32 * 8  # batch 4 x 4 channels x 16 x 32 in float64: elements stay through psi
    assert peaks[True] <= peaks[False] - 2 * stream


@pytest.mark.parametrize("name", ["rev_resnet18", "fullrev_dfresnet56"])
def test_eval_and_no_grad_inference_run_the_plain_loop(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, plain = _pair(name)
    feats = torch.randn(2, 19, FEAT, dtype=torch.float64)

    def forbidden(*_args: object) -> None:
        raise AssertionError("custom backward machinery used without gradients")

    monkeypatch.setattr(rv._ChainFunction, "apply", forbidden)
    monkeypatch.setattr(rv._RecomputeFunction, "apply", forbidden)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(plain, mode)()
        with torch.no_grad():
            torch.testing.assert_close(model(feats), plain(feats), rtol=0, atol=0)
    with torch.inference_mode():
        model(feats)


@pytest.mark.parametrize("name", ["rev_resnet50", "fullrev_resnet50", "fullrev_dfresnet56"])
def test_reconstruction_error_is_at_rounding_level_and_leaves_statistics(name: str) -> None:
    model = get_model(name, feat_dim=FEAT, base_width=4)
    feats = torch.randn(2, 27, FEAT)
    before = copy.deepcopy(model.state_dict())
    err32 = reconstruction_error(model, feats)
    assert 0.0 < err32 < 1e-4
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert reconstruction_error(model.double(), feats.double()) < 1e-12
    assert reconstruction_error(get_model("resnet18", feat_dim=FEAT, base_width=4), feats) == 0.0


def test_type2_pads_time_with_zeros_and_keeps_vanilla_frame_count() -> None:
    model = get_model("fullrev_resnet18", feat_dim=FEAT, embed_dim=6, base_width=4).eval()
    vanilla = get_model("resnet18", feat_dim=FEAT, embed_dim=6, base_width=4).eval()
    feats = torch.randn(2, 21, FEAT)
    padded = torch.cat([feats, torch.zeros(2, 3, FEAT)], 1)
    with torch.no_grad():
        assert model.frame_features(feats).shape == vanilla.frame_features(feats).shape == (2, 32, 2, 3)
        torch.testing.assert_close(model(feats), model(padded), rtol=0, atol=0)
        torch.testing.assert_close(model(feats), model(feats), rtol=0, atol=0)


def test_space_to_depth_round_trips_and_keeps_the_subsample_first() -> None:
    x = torch.randn(2, 3, 8, 6)
    y = rv.space_to_depth(x, 2, 2)
    assert y.shape == (2, 12, 4, 3)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2])
    assert torch.equal(rv.depth_to_space(y, 2, 2), x)
    step = rv.HalfStep(nn.Conv2d(2, 16, 3, 2, 1), 2, 16, 3, (2, 2))
    assert step.stream_out == 16
    c, d = step(x, x + 1)
    a, b = step.inverse(c, d)
    torch.testing.assert_close(a, x)
    torch.testing.assert_close(b, x + 1)
