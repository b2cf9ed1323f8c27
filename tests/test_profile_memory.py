"""The profiler on memsv's own models and optimizers: CPU measurement vs meta estimate, the paper's
claims (8-bit states, depth-independent fullrev activations) and the ``profile-memory`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memsv_cli.cli import main
from memsv_cli.models import get_model
from memsv_cli.profile.memory import measure_step
from memsv_cli.profile.report import default_baseline, model_builder, profile_memory
from memsv_cli.profile.step import StepSetup

TINY = {"batch_size": 2, "frames": 24, "feat_dim": 16, "num_speakers": 20, "embed_dim": 16}


def _tiny(name: str, width: int = 4):  # noqa: ANN202
    return lambda: get_model(name, feat_dim=16, embed_dim=16, base_width=width)


@pytest.mark.parametrize(
    ("model", "optimizer", "precision"),
    [
        ("resnet18", "sgd", "fp32"),
        ("rev_resnet18", "adam8bit", "fp32"),
        ("fullrev_resnet50", "sgd8bit", "fp32"),
        ("fullrev_dfresnet56", "adam", "bf16"),
    ],
)
def test_cpu_measurement_and_meta_estimate_agree_within_10_percent(
    model: str, optimizer: str, precision: str
) -> None:
    setup = StepSetup(**TINY, optimizer=optimizer, precision=precision)
    cpu = measure_step(_tiny(model, 8), setup, "cpu")
    meta = measure_step(_tiny(model, 8), setup, "meta")
    assert abs(meta.total - cpu.total) <= 0.10 * cpu.total, (cpu, meta)
    # Components are a snapshot at the peak; where two local peaks are nearly equal the snapshot may be
    # taken at a different moment, so only the total, parameters and states are compared.
    assert meta.parameters == cpu.parameters and meta.optimizer_states == cpu.optimizer_states


def test_fullrev_activation_bytes_do_not_grow_with_depth() -> None:
    setup = StepSetup(**TINY)
    acts = {
        name: measure_step(_tiny(name), setup, "meta").activations
        for name in ("resnet50", "resnet101", "fullrev_resnet50", "fullrev_resnet101")
    }
    assert acts["fullrev_resnet50"] == acts["fullrev_resnet101"]
    assert acts["resnet101"] > 1.5 * acts["resnet50"]
    assert acts["resnet101"] > 3 * acts["fullrev_resnet101"]


@pytest.mark.parametrize(
    ("model", "optimizer"), [("resnet34", "sgd"), ("resnet34", "adam"), ("dfresnet56", "sgd")]
)
def test_8bit_optimizer_states_are_at_most_026x_of_32bit_in_the_report(model: str, optimizer: str) -> None:
    # DF-ResNets have many BatchNorm / depthwise tensors of 128-1024 elements: at bitsandbytes'
    # min_8bit_size of 4096 they kept fp32 state and the ratio was 0.260-0.265 (docs/design.md).
    setup = dict(TINY, feat_dim=80, embed_dim=256, num_speakers=5994)
    full = measure_step(model_builder(model, 80, 256, 32), StepSetup(**setup, optimizer=optimizer), "meta")
    low = measure_step(
        model_builder(model, 80, 256, 32), StepSetup(**setup, optimizer=optimizer + "8bit"), "meta"
    )
    ratio = low.optimizer_states / full.optimizer_states
    assert 0.25 < ratio <= 0.26
    assert low.parameters == full.parameters


def test_default_baseline_is_the_vanilla_model_with_the_32bit_optimizer() -> None:
    assert default_baseline("fullrev_resnet293", "sgd8bit") == ("resnet293", "sgd")
    assert default_baseline("rev_dfresnet56", "adam") == ("dfresnet56", "adam")
    assert default_baseline("resnet34", "adamw8bit") == ("resnet34", "adamw")
    assert default_baseline("resnet34", "sgd") is None


def test_profile_memory_reports_savings_against_the_baseline() -> None:
    setup = StepSetup(**TINY, optimizer="sgd8bit")
    report = profile_memory("fullrev_resnet101", setup, device="meta", base_width=4)
    out = report.to_json()
    assert out["baseline"]["model"] == "resnet101" and out["baseline"]["optimizer"] == "sgd"
    base, this = out["baseline"]["bytes"], out["bytes"]
    assert out["saving"]["total"] == pytest.approx(base["total"] / this["total"])
    assert out["saving"]["activations"] > 1.0
    assert sum(v for k, v in this.items() if k != "total") == this["total"]


def test_cli_json_prints_exactly_one_object_with_the_issue_schema(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    main(
        [
            "profile-memory",
            "--model",
            "rev_resnet18",
            "--batch-size",
            "2",
            "--frames",
            "24",
            "--feat-dim",
            "16",
            "--num-speakers",
            "20",
            "--embed-dim",
            "16",
            "--base-width",
            "4",
            "--optimizer",
            "adam8bit",
            "--device",
            "meta",
            "--gpu-memory",
            "64MiB",
            "--json",
            "--out",
            str(tmp_path / "memory.json"),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "memory.json").read_text()) == out  # --out: the same object in a file
    assert set(out) == {
        "model",
        "method",
        "setup",
        "bytes",
        "baseline",
        "saving",
        "gpu_memory",
        "memory_plan",
    }
    assert (out["model"], out["method"]) == ("rev_resnet18", "meta")
    assert out["setup"]["optimizer"] == "adam8bit" and out["setup"]["batch_size"] == 2
    keys = {"parameters", "gradients", "optimizer_states", "activations", "other", "total"}
    assert set(out["bytes"]) == keys and set(out["baseline"]["bytes"]) == keys
    assert out["baseline"]["optimizer"] == "adam"
    assert set(out["saving"]) == {"activations", "optimizer_states", "total"}
    fits = out["gpu_memory"]["max_batch_size"]
    assert out["gpu_memory"]["bytes"] == 64 * 2**20 and fits > 2
    one_more = measure_step(
        _tiny("rev_resnet18"), StepSetup(**{**TINY, "batch_size": fits + 1}, optimizer="adam8bit"), "meta"
    )
    assert one_more.total > 64 * 2**20


def test_cli_table_and_compare_none(capsys: pytest.CaptureFixture) -> None:
    main(
        [
            "profile-memory",
            "--model",
            "resnet18",
            "--batch-size",
            "2",
            "--frames",
            "24",
            "--feat-dim",
            "16",
            "--num-speakers",
            "20",
            "--embed-dim",
            "16",
            "--base-width",
            "4",
            "--device",
            "cpu",
            "--compare",
            "none",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "cpu" and out["baseline"] is None and out["saving"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet999"], "unknown model 'resnet999'"),
        (["--model", "resnet18", "--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["--model", "resnet18", "--precision", "fp8"], "unknown precision 'fp8'"),
        (["--model", "resnet18", "--device", "tpu"], "unknown device 'tpu'"),
        (["--model", "resnet18", "--batch-size", "0"], "batch-size must be at least 1"),
        (["--model", "resnet18", "--gpu-memory", "lots"], "cannot read memory size 'lots'"),
        (["--model", "resnet18", "--device", "cuda"], "no CUDA device is available"),  # conftest hides GPUs
    ],
)
def test_cli_bad_input_is_a_one_line_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["profile-memory", *args])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_optimizer_state_bytes_agree_with_the_optimizers_own_count() -> None:
    """The profiler counts the 8-bit optimizer's real state tensors (codes, absmax, small fp32 states):
    its figure equals ``optimizer_state_bytes`` up to the allocator's 512-byte rounding per tensor."""
    from memsv_cli.optim import optimizer_state_bytes
    from memsv_cli.profile.step import TrainingStep

    setup = StepSetup(**TINY, optimizer="adam8bit")
    step = TrainingStep.build(_tiny("resnet18", 8), setup)
    step.warm_up_optimizer()
    tensors = [t for s in step.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    exact = optimizer_state_bytes(step.optimizer)
    profiled = measure_step(_tiny("resnet18", 8), setup, "meta").optimizer_states
    assert exact <= profiled < exact + 512 * len(tensors)
    assert any(t.dtype == torch.uint8 for t in tensors)  # the setup really has 8-bit states


def test_cpu_measurement_is_refused_when_the_step_cannot_fit_in_ram(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import memsv_cli.profile.report as report

    monkeypatch.setattr(report, "available_ram", lambda: 2**19)  # a 512 KiB machine; the step needs ~0.8 MiB
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "profile-memory",
                "--model",
                "resnet18",
                "--batch-size",
                "2",
                "--frames",
                "24",
                "--feat-dim",
                "16",
                "--num-speakers",
                "20",
                "--embed-dim",
                "16",
                "--base-width",
                "4",
                "--device",
                "cpu",
            ]
        )
    assert exit_.value.code == 1
    assert "needs about" in capsys.readouterr().err
