"""Per-block activation checkpointing of the vanilla models: the baseline beside the reversible ones."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from memsv_cli.cli import app
from memsv_cli.errors import MemsvError
from memsv_cli.models import get_model
from memsv_cli.profile.memory import measure_step
from memsv_cli.profile.report import model_builder
from memsv_cli.profile.step import StepSetup


@pytest.mark.parametrize("name", ["resnet18", "dfresnet56"])
def test_same_function_gradients_and_running_statistics_bitwise(name: str) -> None:
    torch.manual_seed(0)
    plain = get_model(name, base_width=4, embed_dim=16)
    ckpt = get_model(name, base_width=4, embed_dim=16, checkpoint_blocks=True)
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # a vanilla checkpoint loads unchanged
    ckpt.load_state_dict(plain.state_dict())
    feats = torch.randn(3, 40, 80)
    for _ in range(2):  # two steps: running statistics and num_batches_tracked move once per step
        out_plain, out_ckpt = plain(feats), ckpt(feats)
        assert torch.equal(out_plain, out_ckpt)
        out_plain.square().sum().backward()
        out_ckpt.square().sum().backward()
    for (key, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), key
    for (key, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        assert torch.equal(a, b), key
    tracked = [b for k, b in ckpt.named_buffers() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(t) == 2 for t in tracked)
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        assert torch.equal(plain(feats), ckpt(feats))


def test_only_vanilla_models_take_it() -> None:
    with pytest.raises(MemsvError, match="checkpoint_blocks"):
        get_model("rev_resnet18", base_width=4, checkpoint_blocks=True)
    with pytest.raises(MemsvError, match="checkpoint_blocks"):
        get_model("resnet18", base_width=4, checkpoint_blocks="yes")


def test_checkpointing_holds_fewer_activations_than_vanilla_and_more_than_reversible() -> None:
    """Meta estimate at width 16, 200 frames (the issue's figures are for saved-for-backward bytes)."""
    setup = StepSetup(batch_size=8, frames=200, num_speakers=50, embed_dim=64)
    peak = {
        label: measure_step(model_builder(name, 80, 64, 16, checkpoint_blocks=ckpt), setup, "meta")
        for label, name, ckpt in (
            ("vanilla", "resnet34", False),
            ("ckpt", "resnet34", True),
            ("fullrev", "fullrev_resnet34", False),
        )
    }
    assert peak["ckpt"].parameters == peak["vanilla"].parameters
    assert peak["ckpt"].activations * 3 < peak["vanilla"].activations
    assert peak["fullrev"].total < peak["ckpt"].total < peak["vanilla"].total


def test_profile_memory_compare_checkpoint() -> None:
    args = ["profile-memory", "--model", "rev_resnet18", "--base-width", "4", "--batch-size", "4"]
    args += ["--frames", "64", "--num-speakers", "10", "--compare", "checkpoint", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["baseline"]["model"] == "resnet18" and report["baseline"]["checkpoint_blocks"] is True
    assert report["baseline"]["optimizer"] == "sgd" and report["saving"]["total"] > 0
