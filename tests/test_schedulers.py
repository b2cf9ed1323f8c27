"""LR and margin schedules at chosen steps, and the AAM-softmax head they drive."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memsv_cli.train.heads import AAMSoftmax
from memsv_cli.train.schedulers import ExponentialDecrease, MarginScheduler, lr_scale


def test_lr_warms_up_linearly_from_zero_then_decays_exponentially() -> None:
    # 10 epochs x 100 steps, 2 warm-up epochs, 0.1 -> 1e-3
    s = ExponentialDecrease(
        None, epochs=10, steps_per_epoch=100, initial_lr=0.1, final_lr=1e-3, warm_up_epochs=2
    )
    decay = lambda t: 0.1 * (1e-3 / 0.1) ** (t / 1000)  # noqa: E731
    assert s.lr_at(0) == 0.0
    assert s.lr_at(100) == pytest.approx(0.5 * decay(100))
    assert s.lr_at(200) == pytest.approx(decay(200))
    assert s.lr_at(500) == pytest.approx(0.1 * 0.1)  # half-way in log space: 1e-2
    assert s.lr_at(1000) == pytest.approx(1e-3)


def test_lr_is_scaled_by_world_size_times_batch_over_64_and_set_on_the_optimizer() -> None:
    assert lr_scale(8, 128) == 16.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    s = ExponentialDecrease(
        opt,
        epochs=2,
        steps_per_epoch=10,
        initial_lr=0.1,
        final_lr=0.01,
        warm_up_epochs=0,
        scale=lr_scale(2, 64),
    )
    assert s.step(0) == pytest.approx(0.2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    s.step(20)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)


def test_margin_is_fixed_outside_the_ramp_and_exp_ramp_follows_wespeaker() -> None:
    m = MarginScheduler(
        None,
        steps_per_epoch=10,
        initial_margin=0.0,
        final_margin=0.2,
        increase_start_epoch=2,
        fix_start_epoch=4,
        increase_type="exp",
    )
    assert m.margin_at(0) == m.margin_at(19) == 0.0
    assert m.margin_at(40) == m.margin_at(1000) == 0.2
    # half-way through the ramp: ratio = 1 - 1e-3 ** 0.5
    assert m.margin_at(30) == pytest.approx(0.2 * (1 - math.sqrt(1e-3)))
    ramp = [m.margin_at(t) for t in range(20, 41)]
    assert ramp == sorted(ramp)


def test_linear_margin_ramp_and_state_round_trip() -> None:
    head = AAMSoftmax(4, 3, margin=0.0)
    m = MarginScheduler(
        head,
        steps_per_epoch=5,
        initial_margin=0.0,
        final_margin=0.2,
        increase_start_epoch=1,
        fix_start_epoch=3,
        increase_type="linear",
    )
    assert m.step(10) == pytest.approx(0.1)
    assert head.margin == pytest.approx(0.1)
    m2 = MarginScheduler(
        head, steps_per_epoch=5, increase_start_epoch=1, fix_start_epoch=3, increase_type="linear"
    )
    head.set_margin(0.0)
    m2.load_state_dict(m.state_dict())
    assert head.margin == pytest.approx(0.1)


def test_aam_head_without_margin_gives_scaled_cosines() -> None:
    head = AAMSoftmax(8, 5, scale=32.0, margin=0.0)
    emb = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3])
    expected = 32.0 * F.linear(F.normalize(emb), F.normalize(head.weight))
    torch.testing.assert_close(head(emb, labels), expected, rtol=1e-5, atol=1e-4)


def test_aam_margin_lowers_only_the_target_logit_by_the_angle() -> None:
    head = AAMSoftmax(8, 5, scale=1.0, margin=0.3)
    emb = head.weight.detach()[:3].clone() + 0.5 * torch.randn(3, 8)
    labels = torch.tensor([0, 1, 2])
    cos = F.linear(F.normalize(emb), F.normalize(head.weight)).detach()
    out = head(emb, labels).detach()
    for b, y in enumerate(labels.tolist()):
        theta = math.acos(float(cos[b, y]))
        assert out[b, y] == pytest.approx(math.cos(theta + 0.3), abs=1e-5)
        others = [c for c in range(5) if c != y]
        torch.testing.assert_close(out[b, others], cos[b, others])


def test_aam_head_stays_fp32_under_autocast_and_returns_plain_cosines() -> None:
    head = AAMSoftmax(8, 5, scale=32.0, margin=0.2)
    emb, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    ref_logits, ref_cos = head(emb, labels, return_cosine=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cos = head(emb, labels, return_cosine=True)
    assert logits.dtype == cos.dtype == torch.float32
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(cos, F.linear(F.normalize(emb), F.normalize(head.weight)).detach())
