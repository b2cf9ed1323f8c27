"""Fit the card (issue 14): memory plans, the cheapest that fits, and predicted against measured peaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli_errors import assert_one_line, run_main
from test_train import TINY
from test_train import tiny_config as _tiny
from test_train_data import make_feats_dir

from memsv_cli.profile.experiment import recipe_from_config
from memsv_cli.profile.plan import (
    Plan,
    Recipe,
    choose_plan,
    enumerate_plans,
    predict_peak,
    required_bytes,
    step_cost,
)
from memsv_cli.train.memory import TOLERANCE, memory_report
from memsv_cli.train.trainer import train

CLASSES = 8


def tiny_config(data_dir: Path, *extra: str) -> dict:
    """test_train's tiny config with the memory check on (the other suites turn it off for speed)."""
    return _tiny(data_dir, "train.memory_check=true", *extra)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feats_dir(tmp_path_factory.mktemp("plan") / "data", num_speakers=CLASSES, utts_per_speaker=8)


def _records(exp: Path) -> list[dict]:
    lines = (exp / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def test_plans_keep_the_samples_per_step_and_only_allowed_ones_change_the_micro_batch() -> None:
    rev = Recipe("rev_resnet18", {"base_width": 4}, 16, 2, 48, 8, "sgd8bit", {"momentum": 0.9}, "fp32")
    plans = enumerate_plans(rev, "bf16")
    assert {p.micro_batch * p.accum_steps for p in plans} == {32}
    assert {p.recompute_chunks for p in plans} == {1, 2, 4, 8} and not any(p.checkpoint_blocks for p in plans)
    assert {p.precision for p in plans} == {"fp32", "bf16"}
    assert step_cost(rev, rev.plan) == 1.0
    assert step_cost(rev, Plan(16, 2, 4, False, "fp32")) == pytest.approx(1.54)  # measured, results.md
    vanilla = Recipe("dfresnet56", {}, 16, 1, 48, 8, "sgd", {}, "bf16")
    plans = enumerate_plans(vanilla, "bf16")
    assert {p.checkpoint_blocks for p in plans} == {False, True} and {p.precision for p in plans} == {"bf16"}
    assert {p.recompute_chunks for p in plans} == {1}
    result = choose_plan(rev, 10**12, predict=lambda r, p: 1)  # everything fits: the recipe itself
    assert result.chosen is not None and result.chosen.plan == rev.plan
    assert all(not c.allowed for c in result.candidates if c.plan.micro_batch != 16)


def test_a_budget_below_the_recipes_peak_trains_and_resumes_with_the_cheapest_fitting_plan(
    data_dir: Path, tmp_path: Path
) -> None:
    # batch 8: 7 candidates (8 x 1 with K = 1..8, 4 x 2 with K = 1..4), each measured below
    config = tiny_config(data_dir, "train.epochs=2", "train.plan_micro_batch=true", "train.batch_size=8")
    recipe = recipe_from_config(config, CLASSES)
    recipe_peak = predict_peak(recipe, recipe.plan)
    budget = int(0.97 * recipe_peak)  # below the recipe's peak itself, let alone its margin
    # every candidate, measured here on real CPU steps (the estimate equals them; faster for toy sizes):
    # the cheapest that fits (reserve 0 on CPU)
    fitting = []
    for plan in enumerate_plans(recipe, None):
        if required_bytes(predict_peak(recipe, plan, "cpu"), 0) <= budget:
            fitting.append((step_cost(recipe, plan), plan))
    assert fitting and min(fitting)[1] != recipe.plan
    cheapest = min(cost for cost, _ in fitting)
    planned = {**config, "train": {**config["train"], "gpu_memory": budget}}
    first = train(planned, tmp_path / "exp", stop_after_epoch=1)
    saved = yaml.safe_load((tmp_path / "exp/config.yaml").read_text())
    chosen = saved["memory_plan"]["chosen"]
    assert chosen["cost"] == pytest.approx(cheapest)
    assert (chosen["micro_batch"], chosen["accum_steps"]) == (
        saved["train"]["batch_size"],
        saved["train"]["accum_steps"],
    )
    assert saved["model"]["args"].get("recompute_chunks", 1) == chosen["recompute_chunks"]
    measured = _records(tmp_path / "exp")[-1]["measured_peak_bytes"]
    assert measured <= budget  # the CPU step, followed by the storage tracker
    assert first.epochs_done == 1
    # --resume given the original, unplanned config continues with the saved plan
    assert train(planned, tmp_path / "exp", resume=True).epochs_done == 2
    log = (tmp_path / "exp/train.log").read_text()
    assert "memory plan for" in log and "chosen" in log and "micro x A" in log


@pytest.mark.parametrize(
    "extra",
    [
        ["model.args.recompute_chunks=4"],
        ["train.accum_steps=2", "train.batch_size=8"],
        ["train.precision=bf16"],
    ],
    ids=["chunks", "accumulation", "bf16"],
)
def test_the_logged_prediction_meets_the_measured_peak_within_5_percent(
    data_dir: Path, tmp_path: Path, extra: list[str]
) -> None:
    train(tiny_config(data_dir, "train.epochs=2", *extra), tmp_path / "exp")
    for record in _records(tmp_path / "exp"):
        predicted, measured = record["predicted_peak_bytes"], record["measured_peak_bytes"]
        assert predicted > 0 and abs(measured / predicted - 1) <= TOLERANCE, (predicted, measured)
    assert "memory: predicted peak" in (tmp_path / "exp/train.log").read_text()


def test_a_measured_peak_above_the_prediction_is_a_one_line_warning() -> None:
    line, warning = memory_report({"predicted_peak_bytes": 100 * 2**20, "measured_peak_bytes": 104 * 2**20})
    assert warning is None and "predicted peak 100.00 MiB" in line
    _, warning = memory_report(
        {"predicted_peak_bytes": 100 * 2**20, "measured_peak_bytes": 106 * 2**20, "reserved_peak_bytes": None}
    )
    assert warning is not None and "6.0%" in warning and "\n" not in warning


def test_nothing_fits_is_one_line_naming_the_smallest_peak(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "tiny.yaml"
    conf.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    args = ["train", "-c", str(conf), "--data", str(data_dir), "--exp-dir", str(tmp_path / "exp")]
    args += ["--gpu-memory", "64KiB"]
    # a vanilla model: the least-memory plans are checkpointed ones, quicker to profile than K = 8
    extra = ["train.epochs=1", "train.memory_check=true", "model.name=resnet18", "train.batch_size=8"]
    sets = [x for item in [*TINY, *extra] for x in ("--set", item)]
    code, _, err = run_main([*args, *sets], capsys)
    assert code == 1
    assert_one_line(err, "memsv train: error:", "nothing fits 64.00 KiB", "smallest peak")


def test_profile_memory_prints_the_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile-memory", "--model", "fullrev_resnet18", "--base-width", "4", "--batch-size", "8"]
    argv += ["--frames", "48", "--feat-dim", "16", "--num-speakers", "8", "--embed-dim", "16"]
    argv += ["--compare", "none", "--gpu-memory", "600MiB"]  # 512 MiB of it reserved for CUDA
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "micro x A" in out and "memory plan for 600.00 MiB" in out and "chosen" in out
