"""Model zoo: names, parameter counts, shapes, errors (vanilla and both reversible types)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memsv_cli.errors import MemsvError
from memsv_cli.models import get_model, list_models
from memsv_cli.models.units import THIN_CHANNELS, Conv2d

FAMILIES = ["resnet18", "resnet50", "dfresnet56"]
VARIANTS = ["", "rev_", "fullrev_"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_has_every_family_and_both_reversible_types() -> None:
    names = list_models()
    bases = [f"resnet{d}" for d in (18, 34, 50, 101, 152, 221, 293)]
    bases += [f"dfresnet{d}" for d in (56, 110, 179, 233)]
    assert sorted(names) == sorted(p + b for p in VARIANTS for b in bases)


def test_unknown_name_raises_memsv_error_listing_valid_names() -> None:
    with pytest.raises(MemsvError, match="unknown model 'resnet35'.*rev_resnet34.*fullrev_dfresnet233"):
        get_model("resnet35")


def test_unexpected_argument_is_rejected_not_ignored() -> None:
    with pytest.raises(MemsvError, match="dropout"):
        get_model("rev_resnet18", base_width=4, dropout=0.1)
    with pytest.raises(MemsvError, match="reversible_backward"):
        get_model("resnet18", base_width=4, reversible_backward=False)


@pytest.mark.parametrize(
    ("name", "expected", "tolerance"),
    [
        ("resnet34", 6.63e6, 0.01),
        ("resnet221", 23.79e6, 0.01),
        ("resnet293", 28.62e6, 0.01),
        ("dfresnet56", 4.5e6, 0.05),
        ("dfresnet233", 12.3e6, 0.05),
    ],
)
def test_vanilla_parameter_counts_match_published_sizes(name: str, expected: float, tolerance: float) -> None:
    with torch.device("meta"):  # counts only: no memory, no init time
        model = get_model(name)
    assert abs(n_params(model) - expected) <= tolerance * expected


@pytest.mark.parametrize("base", ["resnet34", "resnet293", "dfresnet56", "dfresnet233"])
def test_reversible_variants_keep_the_vanilla_parameter_count(base: str) -> None:
    with torch.device("meta"):
        vanilla = n_params(get_model(base))
        type1 = n_params(get_model("rev_" + base))
        type2 = n_params(get_model("fullrev_" + base))
    assert abs(type1 - vanilla) <= 0.02 * vanilla
    assert abs(type2 - vanilla) <= 0.05 * vanilla


@pytest.mark.parametrize("prefix", VARIANTS)
@pytest.mark.parametrize("base", FAMILIES)
@pytest.mark.parametrize("frames", [9, 21, 37])
def test_output_shape_for_odd_frame_counts(prefix: str, base: str, frames: int) -> None:
    model = get_model(prefix + base, feat_dim=20, embed_dim=6, base_width=4)
    out = model(torch.randn(2, frames, 20))
    assert out.shape == (2, 6)
    assert torch.isfinite(out).all()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from memsv_cli.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_list_models_json_gives_every_name_with_its_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    code, out, _ = _cli(["list-models", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert sorted(rows) == sorted(list_models())
    assert rows["resnet34"]["params"] == rows["rev_resnet34"]["params"] == 6634336
    assert rows["fullrev_dfresnet233"]["variant"] == "fullrev"


def test_cli_list_models_bad_size_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["list-models", "--base-width", "0"], capsys)
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and "base_width must be a positive integer" in err


def test_wrong_feature_dimension_is_a_user_error() -> None:
    model = get_model("rev_resnet18", feat_dim=20, base_width=4)
    with pytest.raises(MemsvError, match=r"expects \(batch, frames, 20\) features, got \(2, 30, 24\)"):
        model(torch.randn(2, 30, 24))


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "kernel", "stride", "groups"),
    [(1, 4, 3, 1, 1), (4, 4, 3, 1, 1), (4, 8, 3, 2, 1), (8, 8, 3, 1, 8), (4, 8, 1, 2, 1), (16, 16, 3, 1, 1)],
)
def test_thin_conv_trains_as_nn_conv2d_and_saves_the_same_tensors(
    in_ch: int, out_ch: int, kernel: int, stride: int, groups: int
) -> None:
    """memsv's Conv2d (channels_last inside for thin layers on CPU) against nn.Conv2d: same outputs and
    gradients up to float rounding, the same bytes saved for backward, and exactly nn.Conv2d in eval."""
    torch.manual_seed(0)
    ours = Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    ref = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, in_ch, 20, 17)
    # the channels_last path is taken exactly for thin layers (not for strided 1x1, not above the limit)
    assert ours._thin_training(x) == (max(in_ch, out_ch) <= THIN_CHANNELS and (kernel, stride) != (1, 2))
    results = []
    for conv in (ours, ref):
        inp = x.clone().requires_grad_()
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = conv(inp)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), inp.grad, conv.weight.grad, sorted(saved)))
    (y, gx, gw, saved), (y_ref, gx_ref, gw_ref, saved_ref) = results
    assert y.is_contiguous() and gx.is_contiguous() and gw.is_contiguous()
    for a, b in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert saved == saved_ref
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
