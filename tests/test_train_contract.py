"""The shape of the train package (issue 12, item 1): one step, one checkpoint contract, small functions,
typed settings; and the behaviour around them: retention, refused resumes, TensorBoard, log lines."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY
from test_train_data import make_feats_dir

import memsv_cli.train as train_pkg
from memsv_cli.data.sampler import ChunkBatchSampler
from memsv_cli.errors import MemsvError
from memsv_cli.train import checkpoint as ckpt
from memsv_cli.train.config import DEFAULTS, family_switch_warning, resolve_config
from memsv_cli.train.trainer import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_feats_dir(tmp_path_factory.mktemp("contract") / "data", num_speakers=8, utts_per_speaker=8)


def tiny(data_dir: Path, *extra: str) -> dict:
    return resolve_config(None, [f"data.dir={data_dir}", *TINY, *extra])


def test_profile_memory_and_train_run_the_same_step_function(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memsv_cli.profile import StepSetup, measure_step
    from memsv_cli.profile.report import model_builder
    from memsv_cli.train.step import TrainStep

    calls: list[str] = []
    real = TrainStep.__call__

    def counted(self: TrainStep, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(type(self.net).__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", counted)
    setup = StepSetup(
        batch_size=4, frames=32, feat_dim=16, num_speakers=8, embed_dim=32, optimizer="adam8bit"
    )
    measure_step(model_builder("rev_resnet18", 16, 32, 4), setup, "meta")
    profiled = len(calls)
    assert profiled >= 1  # the measured step is TrainStep.__call__ itself
    train(tiny(data_dir, "train.epochs=1", "train.num_avg=0", "train.memory_check=true"), tmp_path / "exp")
    # every optimizer step of the run went through it too, and so did the run's own memory prediction
    # (train.memory_check: the profiler's step at the start)
    assert len(calls) - profiled == 4 + 1
    source = (Path(train_pkg.__file__).parents[1] / "profile" / "step.py").read_text()
    assert ".backward(" not in source and "optimizer.step()" not in source.replace(
        "self.optimizer.step()", ""
    )


def test_no_function_in_train_is_longer_than_60_lines() -> None:
    long = []
    for path in sorted(Path(train_pkg.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long


def _documented_keys(heading: str) -> list[str]:
    """The ``- ``key``: ...`` bullets under ``heading`` in checkpoint.py's module docstring."""
    doc = ckpt.__doc__ or ""
    section = doc.split(heading, 1)[1].split("\n\n", 2)[1]
    return re.findall(r"^- ``(\w+)``", section, flags=re.M)


def test_checkpoint_docstring_lists_exactly_the_keys_written(data_dir: Path, tmp_path: Path) -> None:
    train(tiny(data_dir, "train.epochs=1", "train.num_avg=1"), tmp_path / "exp")
    models = tmp_path / "exp/models"
    full_doc = _documented_keys("Keys of a full checkpoint")
    weights_doc = _documented_keys("Keys of a weights-only file")
    assert full_doc == list(ckpt.FULL_KEYS) and weights_doc == list(ckpt.WEIGHTS_KEYS)
    assert sorted(torch.load(models / "last.pt", weights_only=False)) == sorted(full_doc)
    assert sorted(torch.load(models / "model_1.pt", weights_only=False)) == sorted(weights_doc)
    assert sorted(torch.load(models / "avg_model.pt", weights_only=False)) == sorted(
        [*weights_doc, "averaged_epochs"]
    )


def test_settings_sections_have_exactly_the_schema_keys() -> None:
    from dataclasses import fields

    from memsv_cli.train.settings import Settings

    s = Settings.from_config(resolve_config())
    for section, name in (("data", "data"), ("train", "train"), ("margin_scheduler", "margin")):
        assert {f.name for f in fields(getattr(s, name))} == set(DEFAULTS[section])
    assert s.train.accum_steps == 1 and s.model.embed_dim == 256 and s.train.save_every_minutes == 30


def test_retention_keeps_the_newest_checkpoints_and_epoch_models(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny(
        data_dir, "train.epochs=4", "train.save_every_steps=1", "train.keep_checkpoints=1",
        "train.keep_epoch_models=2", "train.num_avg=2",
    )  # fmt: skip
    result = train(cfg, tmp_path / "exp")
    names = sorted(p.name for p in (tmp_path / "exp/models").iterdir())
    assert names == [
        "avg_model.pt",
        "checkpoint_00000016.pt",
        "final_model.pt",
        "last.pt",
        "model_3.pt",
        "model_4.pt",
    ]
    assert ckpt.load_checkpoint(tmp_path / "exp/models/avg_model.pt")["averaged_epochs"] == [3, 4]
    # train.log grows by the report line, the lock record goes at the end
    assert result.disk_bytes > 0 and abs(result.disk_bytes - ckpt.disk_use(tmp_path / "exp")) < 1024
    with pytest.raises(MemsvError, match="keep_epoch_models"):
        tiny(data_dir, "train.keep_epoch_models=1", "train.num_avg=2")


def test_resume_refuses_a_longer_run_and_another_step_layout_saying_what_to_do(
    data_dir: Path, tmp_path: Path
) -> None:
    train(tiny(data_dir, "train.epochs=2"), tmp_path / "exp", stop_after_epoch=1)
    with pytest.raises(MemsvError, match=r"train.epochs is 5 but .* was trained for 2: .*train.init_model="):
        train(tiny(data_dir, "train.epochs=5"), tmp_path / "exp", resume=True)
    # 2 micro-batches per step instead of 1: other batches, refused
    with pytest.raises(MemsvError, match="written with 1 micro-batches per step .* accum_steps = 1"):
        train(tiny(data_dir, "train.epochs=2", "train.accum_steps=2"), tmp_path / "exp", resume=True)
    done = train(tiny(data_dir, "train.epochs=2", "train.save_every_steps=3"), tmp_path / "exp", resume=True)
    assert done.epochs_done == 2  # the runtime keys (checkpoint cadence) may change


def test_accumulation_slots_are_the_ddp_ranks_micro_batches_in_order() -> None:
    one = ChunkBatchSampler(50, 4, seed=7, accum_steps=2)
    ranks = [ChunkBatchSampler(50, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(3)
    assert one.steps_per_epoch == ranks[0].steps_per_epoch == 6 and len(one) == 12
    interleaved = [b for pair in zip(*(list(r) for r in ranks), strict=True) for b in pair]
    assert list(one) == interleaved
    one.set_epoch(3, start_step=4)  # resuming inside the epoch skips whole steps, loads nothing else
    assert len(one) == 4 and list(one) == interleaved[8:]


def test_tensorboard_scalars_are_written_by_rank_0(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(data_dir, "train.epochs=2", "train.tensorboard=true"), tmp_path / "exp")
    events = EventAccumulator(str(tmp_path / "exp/tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "train/margin", "train/samples_per_s"} <= tags
    assert {"epoch/loss", "epoch/acc", "memory/peak_bytes"} <= tags
    assert [e.step for e in events.Scalars("train/lr")] == [2, 4, 6, 8]  # log_interval 2
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(0.01 * 0.1 ** (1 / 8), rel=1e-5)


def test_progress_lines_do_not_wrap_in_a_log() -> None:
    from rich.console import Console

    from memsv_cli.train.progress import TrainProgress

    out = io.StringIO()
    metrics = {
        "epoch": 12, "loss": 1.25, "acc": 0.5, "lr": 1e-3, "margin": 0.2, "samples_per_s": 40.0,
        "peak_mem_bytes": 438 * 2**20,
    }  # fmt: skip
    with TrainProgress(
        True, total_epochs=150, console=Console(file=out, force_terminal=False, width=80)
    ) as p:
        p.end_epoch(metrics)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("peak 438 MiB") and len(lines[0]) > 80


@pytest.mark.parametrize(
    ("flags", "warns"),
    [
        (["optimizer.name=adam8bit"], True),  # an SGD config at SGD's LR 0.1 under Adam
        (["optimizer.name=sgd8bit"], False),  # same family
        (["optimizer.name=adam8bit", "scheduler.initial_lr=1e-3"], False),  # the user set the LR
    ],
)
def test_switching_optimizer_family_by_flag_warns_about_the_learning_rate(
    flags: list[str], warns: bool
) -> None:
    conf = Path(__file__).resolve().parents[1] / "recipes/voxceleb/conf/resnet34.yaml"
    message = family_switch_warning(resolve_config(conf), resolve_config(conf, flags), flags)
    assert (message is not None) == warns
    if warns:
        assert "scheduler.initial_lr 0.1" in message and "\n" not in message


def test_average_model_reads_memsv_0_1_epoch_checkpoints(data_dir: Path, tmp_path: Path) -> None:
    from memsv_cli.train.averaging import average_checkpoints

    train(tiny(data_dir, "train.epochs=2", "train.num_avg=0"), tmp_path / "exp")
    old = tmp_path / "old"
    old.mkdir()
    for e in (1, 2):  # a format-1 full checkpoint per epoch, as memsv 0.1 wrote them
        payload = torch.load(tmp_path / f"exp/models/model_{e}.pt", weights_only=False)
        payload = {**payload, "format_version": 1, "optimizer": {}, "schedulers": {}, "rng": []}
        torch.save(payload, old / f"epoch_{e}.pt")
    dst, epochs = average_checkpoints(old, num=2)
    assert epochs == [1, 2]
    avg = ckpt.load_checkpoint(dst)["model"]
    e1, e2 = (torch.load(old / f"epoch_{e}.pt", weights_only=False)["model"] for e in (1, 2))
    key = next(k for k, v in avg.items() if v.is_floating_point())
    np.testing.assert_allclose(avg[key].numpy(), ((e1[key].double() + e2[key].double()) / 2).float().numpy())


def test_resume_skips_an_unreadable_newest_checkpoint_with_a_warning(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny(data_dir, "train.epochs=2", "train.save_every_steps=2", "train.num_avg=0")
    straight = train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "exp", stop_after_epoch=1)
    newest = tmp_path / "exp/models/checkpoint_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that lied about a completed write
    done = train(cfg, tmp_path / "exp", resume=True)
    err = capsys.readouterr().err
    assert f"memsv train: warning: skipping {newest}: " in err and err.count("\n") == 1
    log = (tmp_path / "exp/train.log").read_text()
    assert f"resumed from {tmp_path}/exp/models/checkpoint_00000002.pt" in log and "warning: skipping" in log
    assert done.step == straight.step == 8
    a, b = (
        ckpt.load_checkpoint(p / "models/last.pt")["model"] for p in (tmp_path / "straight", tmp_path / "exp")
    )
    assert all(torch.equal(v, b[k]) for k, v in a.items())
