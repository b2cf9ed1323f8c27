"""``profile-memory --exp``: the profile of exactly the setup an experiment trained (issue 14 item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli_errors import assert_one_line, run_main

from memsv_cli.commands.train import _num_avg
from memsv_cli.profile.experiment import read_experiment


def _experiment(
    tmp_path: Path, *, precision: str = "fp32", chunks: int | None = 4, speed: bool = True
) -> Path:
    """An exp dir as ``memsv train`` leaves it before its first epoch: config.yaml, a 5-speaker data dir."""
    data = tmp_path / "train"
    data.mkdir()
    (data / "spk2utt").write_text("".join(f"s{i} s{i}-u1 s{i}-u2\n" for i in range(5)))
    args: dict[str, object] = {"feat_dim": 40, "embed_dim": 16, "base_width": 4}
    if chunks is not None:
        args["recompute_chunks"] = chunks
    config = {
        "data": {"dir": str(data), "chunk_frames": 48, "speed_perturb": speed},
        "model": {"name": "rev_resnet18", "args": args},
        "optimizer": {"name": "sgd8bit", "args": {"momentum": 0.9}},
        "train": {"batch_size": 6, "accum_steps": 2, "precision": precision, "num_avg": 3},
    }
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    return exp


def _profile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run_main(["profile-memory", *argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_the_chunked_setup_of_the_config_and_the_classes_of_speed_perturbation(tmp_path, capsys) -> None:
    exp = _experiment(tmp_path)
    report = _profile(["--exp", str(exp), "--compare", "none"], capsys)
    assert report["model"] == "rev_resnet18"
    assert report["setup"] == {
        "batch_size": 6,  # the per-process micro-batch ...
        "accum_steps": 2,  # ... twice per optimizer step
        "frames": 48,
        "feat_dim": 40,
        "num_speakers": 15,  # 5 speakers x 3 speeds
        "embed_dim": 16,
        "optimizer": "sgd8bit",
        "precision": "fp32",
        "base_width": 4,
        "recompute_chunks": 4,
        "checkpoint_blocks": False,
    }
    # the same numbers as naming every option by hand
    by_hand = ["--model", "rev_resnet18", "--batch-size", "6", "--frames", "48", "--feat-dim", "40"]
    by_hand += ["--num-speakers", "15", "--embed-dim", "16", "--optimizer", "sgd8bit", "--base-width", "4"]
    by_hand += ["--recompute-chunks", "4", "--compare", "none", "--accum-steps", "2"]
    assert _profile(by_hand, capsys)["bytes"] == report["bytes"]


def test_accumulation_adds_the_gradients_alive_during_the_next_micro_batch(tmp_path, capsys) -> None:
    """With A > 1 the second micro-batch runs with the first one's gradients (and every input) alive:
    more than the single micro-batch's peak, by at most the gradients and the extra inputs."""
    exp = _experiment(tmp_path, chunks=None)
    accum = {
        a: _profile(["--exp", str(exp), "--compare", "none", "--accum-steps", str(a)], capsys)
        for a in (1, 2, 4)
    }
    grads = accum[1]["bytes"]["parameters"]  # gradients are parameter-sized (fp32 weights)
    one_input = 6 * 48 * 40 * 4 + 512  # a (6, 48, 40) fp32 micro-batch + its labels, 512-byte blocks
    assert (
        accum[1]["bytes"]["total"]
        < accum[2]["bytes"]["total"]
        <= accum[1]["bytes"]["total"] + grads + one_input
    )
    assert accum[4]["bytes"]["total"] - accum[2]["bytes"]["total"] == 2 * one_input


def test_options_on_the_command_line_override_the_experiment(tmp_path, capsys) -> None:
    exp = _experiment(tmp_path, chunks=None, speed=False)
    report = _profile(["--exp", str(exp), "--batch-size", "2", "--compare", "none"], capsys)
    assert report["setup"]["batch_size"] == 2 and report["setup"]["frames"] == 48
    assert report["setup"]["num_speakers"] == 5 and report["setup"]["recompute_chunks"] == 1


def test_classes_come_from_the_trained_head_once_weights_exist(tmp_path) -> None:
    exp = _experiment(tmp_path)
    (exp / "models").mkdir()
    for epoch, classes in ((2, 7), (10, 9)):  # the newest by number, not by name
        torch.save({"head": {"weight": torch.zeros(classes, 16)}}, exp / "models" / f"model_{epoch}.pt")
    assert read_experiment(exp).num_speakers == 9
    torch.save({"head": {"weight": torch.zeros(11, 16)}}, exp / "models" / "final_model.pt")
    assert read_experiment(exp).num_speakers == 11


def test_an_fp16_run_is_profiled_with_its_loss_scaler(tmp_path, capsys) -> None:
    """fp16 = float16 autocast + the GradScaler's tensors; on meta exactly what a CPU step measures."""
    exp = _experiment(tmp_path, precision="fp16", chunks=None)
    report = _profile(["--exp", str(exp), "--compare", "none"], capsys)
    assert report["setup"]["precision"] == "fp16"
    cpu = _profile(["--exp", str(exp), "--compare", "none", "--device", "cpu"], capsys)
    assert cpu["bytes"]["total"] == report["bytes"]["total"]
    bf16 = _profile(["--exp", str(exp), "--compare", "none", "--precision", "bf16"], capsys)
    assert 0 < report["bytes"]["total"] - bf16["bytes"]["total"] <= 3 * 512  # scale, growth, found_inf


def test_missing_experiments_are_one_line_errors(tmp_path, capsys) -> None:
    code, _, err = run_main(["profile-memory", "--exp", str(tmp_path / "nowhere")], capsys)
    assert code == 1
    assert_one_line(err, "memsv profile-memory: error:", "config.yaml", "no such config file")
    code, _, err = run_main(["profile-memory"], capsys)
    assert code == 1
    assert_one_line(err, "memsv profile-memory: error:", "--model or --exp")


def test_average_model_defaults_to_the_experiments_num_avg(tmp_path) -> None:
    assert _num_avg(_experiment(tmp_path)) == 3
    assert _num_avg(tmp_path / "no-such-exp") == 10
    assert _num_avg(None) == 10
