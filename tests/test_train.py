"""The train stage end to end on a tiny synthetic set: learning, exact resume, failures, outputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml
from test_train_data import make_feats_dir

from memsv_cli.cli import main
from memsv_cli.errors import MemsvError
from memsv_cli.train.averaging import average_checkpoints
from memsv_cli.train.checkpoint import load_checkpoint, load_model_from_checkpoint
from memsv_cli.train.config import resolve_config
from memsv_cli.train.trainer import NonFiniteLoss, train

TINY = [
    "model.name=rev_resnet18",
    "model.args.feat_dim=16",
    "model.args.embed_dim=32",
    "model.args.base_width=4",
    "optimizer.name=adam8bit",
    "data.chunk_frames=48",
    "train.batch_size=16",
    "train.num_workers=0",
    "train.progress=false",
    "train.memory_check=false",  # tests/test_memory_plan.py covers it; ~1 s per run elsewhere
    "train.log_interval=2",
    "train.num_avg=2",
    "scheduler.initial_lr=0.01",
    "scheduler.final_lr=0.001",
    "scheduler.warm_up_epochs=0",
    "scheduler.scale_by_batch=false",
    "margin_scheduler.increase_start_epoch=1",
    "margin_scheduler.fix_start_epoch=2",
    "margin_scheduler.final_margin=0.1",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feats_dir(tmp_path_factory.mktemp("train") / "data", num_speakers=8, utts_per_speaker=8)


def tiny_config(data_dir: Path, *extra: str) -> dict:
    return resolve_config(None, [f"data.dir={data_dir}", *TINY, *extra])


def test_tiny_reversible_model_with_adam8bit_learns(data_dir: Path, tmp_path: Path) -> None:
    # 10 epochs x 4 steps of 16 chunks; no margin so that the loss is comparable across epochs
    cfg = tiny_config(data_dir, "train.epochs=10", "margin_scheduler.final_margin=0.0", "train.num_avg=0")
    result = train(cfg, tmp_path / "exp")
    losses = [h["loss"] for h in result.history]
    assert result.epochs_done == 10 and len(losses) == 10
    assert losses[-1] < 0.3 * losses[0]
    assert result.history[-1]["acc"] > 0.6  # chance is 1/8
    opt_state = load_checkpoint(tmp_path / "exp/models/last.pt")["optimizer"]["state"]
    assert any(t.dtype == torch.uint8 for s in opt_state.values() for t in s.values() if torch.is_tensor(t))


def test_resume_after_interruption_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    # one DataLoader worker: worker seeding must not depend on the process history either
    cfg = tiny_config(data_dir, "train.epochs=2", "train.num_workers=1", "data.spec_aug=true")
    train(cfg, tmp_path / "straight")
    first = train(cfg, tmp_path / "resumed", stop_after_epoch=1)
    assert first.epochs_done == 1 and not (tmp_path / "resumed/models/model_2.pt").exists()
    second = train(cfg, tmp_path / "resumed", resume=True)
    assert second.epochs_done == 2 and len(second.history) == 1
    a = load_checkpoint(tmp_path / "straight/models/last.pt")
    b = load_checkpoint(tmp_path / "resumed/models/last.pt")
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                assert torch.equal(value, b["optimizer"]["state"][pid][key]), f"optimizer state {pid}.{key}"
    assert a["step"] == b["step"] == 8
    # the metrics of the resumed run match those of the straight one, epoch for epoch
    rec = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "samples_per_s", "peak_mem_bytes")}  # noqa: E731
    assert [strip(r) for r in rec(tmp_path / "straight")] == [strip(r) for r in rec(tmp_path / "resumed")]


def test_resume_refuses_a_changed_config_and_fresh_run_refuses_existing_checkpoints(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(data_dir, "train.epochs=2")
    train(cfg, tmp_path / "exp", stop_after_epoch=1)
    with pytest.raises(MemsvError, match="already holds checkpoints"):
        train(cfg, tmp_path / "exp")
    with pytest.raises(MemsvError, match="scheduler.initial_lr"):
        train(
            tiny_config(data_dir, "train.epochs=2", "scheduler.initial_lr=0.5"), tmp_path / "exp", resume=True
        )


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(data_dir, "train.epochs=2")
    train(cfg, tmp_path / "exp", stop_after_epoch=1)
    # corrupt every utterance with a NaN, then continue
    bad = tmp_path / "bad"
    bad.mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{bad / 'feats.ark'},{bad / 'feats.scp'}") as writer:
        for utt, mat in kaldiio.load_scp(str(data_dir / "feats.scp")).items():
            mat = mat.copy()
            mat[3, 2] = np.nan
            writer(utt, mat)
    (bad / "utt2spk").write_text((data_dir / "utt2spk").read_text())
    cfg_bad = dict(cfg, data={**cfg["data"], "dir": str(bad)})
    with pytest.raises(NonFiniteLoss, match="non-finite at epoch 2, step 1"):
        train(cfg_bad, tmp_path / "exp", resume=True)
    assert (tmp_path / "exp/models/model_1.pt").is_file()
    assert not (tmp_path / "exp/models/model_2.pt").exists()
    assert sorted(p.name for p in (tmp_path / "exp/models").glob("checkpoint_*")) == [
        "checkpoint_00000004.pt"
    ]
    assert "stopped: loss became non-finite" in (tmp_path / "exp/train.log").read_text()


def test_average_model_is_the_mean_of_the_last_epochs(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data_dir, "train.epochs=3", "train.num_avg=2")
    result = train(cfg, tmp_path / "exp")
    assert result.avg_model == tmp_path / "exp/models/avg_model.pt"
    e2, e3 = (load_checkpoint(tmp_path / f"exp/models/model_{e}.pt")["model"] for e in (2, 3))
    avg = load_checkpoint(result.avg_model)
    assert avg["averaged_epochs"] == [2, 3]
    for key, value in avg["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (e2[key] + e3[key]) / 2)
    # another selection through the library call: the last epoch only equals that epoch
    dst, epochs = average_checkpoints(tmp_path / "exp/models", tmp_path / "last.pt", num=1)
    assert epochs == [3]
    assert all(torch.equal(v, e3[k]) for k, v in load_checkpoint(dst)["model"].items())


def test_cli_train_writes_config_logs_metrics_curve_and_a_loadable_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "tiny.yaml"
    conf.write_text(
        yaml.safe_dump(
            {"model": {"name": "rev_resnet18", "args": {"feat_dim": 16, "embed_dim": 32, "base_width": 4}}}
        )
    )
    exp = tmp_path / "exp"
    overrides = [a for s in TINY[4:] for a in ("--set", s)]
    main(  # returns normally on success (exit status 0)
        [
            "train",
            "--config",
            str(conf),
            "--data",
            str(data_dir),
            "--exp-dir",
            str(exp),
            "--epochs",
            "2",
            "--device",
            "cpu",
            *overrides,
        ]
    )
    assert "trained 2 epoch(s)" in capsys.readouterr().out
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    assert saved["model"] == {
        "name": "rev_resnet18",
        "args": {"feat_dim": 16, "embed_dim": 32, "base_width": 4},
    }
    assert saved["train"]["epochs"] == 2 and saved["data"]["dir"] == str(data_dir)
    records = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(r["peak_mem_bytes"] > 0 and r["peak_mem_kind"] == "cpu_peak_rss" for r in epochs)
    assert any(r["type"] == "step" for r in records)
    assert (exp / "train_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2/2 loss" in (exp / "train.log").read_text()
    model, config = load_model_from_checkpoint(exp / "models/avg_model.pt")
    assert model(torch.randn(3, 48, 16)).shape == (3, 32)
    # average-model recomputes it from the command line
    main(["average-model", "--exp-dir", str(exp), "--num", "1", "--dst-model", str(tmp_path / "a.pt")])
    assert (tmp_path / "a.pt").is_file()
    # --resume without --config reuses EXP/config.yaml; with every epoch done it only re-averages
    before = (exp / "models/model_2.pt").stat().st_mtime_ns
    main(["train", "--exp-dir", str(exp), "--resume"])
    assert (exp / "models/model_2.pt").stat().st_mtime_ns == before
    assert load_checkpoint(exp / "models/avg_model.pt")["averaged_epochs"] == [1, 2]


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "--data",
                str(tmp_path / "missing"),
                "--exp-dir",
                str(tmp_path / "e"),
                "--set",
                "train.epochs=1",
                "--set",
                "train.bogus=1",
                "--config",
                str(empty),
            ]
        )
    err = capsys.readouterr().err
    assert done.value.code == 1
    assert err.count("\n") == 1
    assert err.startswith(
        "memsv train: error: --set train.bogus=1: unknown config key 'train.bogus' "
        "(known here: accum_steps, batch_size, "
    )
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "--config",
                str(empty),
                "--data",
                str(tmp_path / "missing"),
                "--exp-dir",
                str(tmp_path / "e"),
            ]
        )
    assert done.value.code == 1
    assert "no such data directory" in capsys.readouterr().err


def test_progress_prints_one_line_per_epoch_when_not_on_a_terminal() -> None:
    import io

    from rich.console import Console

    from memsv_cli.train.progress import TrainProgress

    out = io.StringIO()
    metrics = {
        "epoch": 3,
        "loss": 1.25,
        "acc": 0.5,
        "lr": 1e-3,
        "margin": 0.2,
        "samples_per_s": 40.0,
        "peak_mem_bytes": 3 * 2**20,
    }
    with TrainProgress(True, total_epochs=5, console=Console(file=out, force_terminal=False, width=200)) as p:
        p.start_epoch(3, steps=2)
        p.update(loss=1.0, acc=0.5, lr=1e-3, margin=0.2, samples_per_s=40.0)
        p.end_epoch(metrics)
    assert out.getvalue() == (
        "epoch 3/5 loss 1.250 acc  50.0% lr 1.00e-03 margin 0.200 40 samples/s peak 3 MiB\n"
    )
    silent = io.StringIO()
    with TrainProgress(False, total_epochs=5, console=Console(file=silent)) as p:
        p.end_epoch(metrics)
    assert silent.getvalue() == ""


def test_init_model_loads_weights_and_head_and_rejects_another_architecture(
    data_dir: Path, tmp_path: Path
) -> None:
    from memsv_cli.data.sampler import ChunkBatchSampler
    from memsv_cli.train.distributed import DistInfo
    from memsv_cli.train.settings import Settings
    from memsv_cli.train.state import build_state, init_from_checkpoint

    cfg = tiny_config(data_dir, "train.epochs=1", "train.num_avg=1")
    train(cfg, tmp_path / "exp")
    avg = tmp_path / "exp/models/avg_model.pt"
    plan = ChunkBatchSampler(64, batch_size=16, seed=42)
    state = build_state(Settings.from_config(cfg), num_classes=8, plan=plan, info=DistInfo())
    assert init_from_checkpoint(state.net, str(avg)).startswith("initialised model and head")
    saved = load_checkpoint(avg)
    assert all(torch.equal(v, saved["model"][k]) for k, v in state.net.model.state_dict().items())
    assert torch.equal(state.net.head.weight, saved["head"]["weight"])
    other = build_state(
        Settings.from_config(tiny_config(data_dir, "model.name=resnet18")),
        num_classes=8,
        plan=plan,
        info=DistInfo(),
    )
    other.net.model = torch.nn.Linear(2, 2)
    with pytest.raises(MemsvError, match="do not fit this model"):
        init_from_checkpoint(other.net, str(avg))
