"""Training from audio (issue 13): data types raw and shard with the online chain (speed perturbation,
reverb/noise, fbank with dither, CMN): shapes, labels, determinism, epoch size, exact mid-epoch resume,
and unreadable samples skipped and counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from memsv_cli.data.augment import make_synthetic_sources
from memsv_cli.data.mini import MiniConfig, prepare_mini
from memsv_cli.data.training import LoaderOptions, load_training_source
from memsv_cli.errors import MemsvError
from memsv_cli.train.checkpoint import load_checkpoint
from memsv_cli.train.config import diff_keys, resolve_config, with_defaults
from memsv_cli.train.settings import Settings
from memsv_cli.train.trainer import train

CORPUS = MiniConfig(
    num_speakers=6, utts_per_speaker=6, num_test_speakers=2, test_utts_per_speaker=2, videos_per_speaker=2,
    min_seconds=0.6, max_seconds=1.4, seed=11,
)  # fmt: skip
ONLINE = [
    "model.name=rev_resnet18",
    "model.args.feat_dim=80",
    "model.args.embed_dim=32",
    "model.args.base_width=4",
    "optimizer.name=adam8bit",
    "data.chunk_frames=50",
    "data.speed_perturb=true",
    "data.aug_prob=0.6",
    "train.batch_size=6",
    "train.epochs=2",
    "train.num_workers=1",
    "train.progress=false",
    "train.memory_check=false",  # tests/test_memory_plan.py covers it
    "train.log_interval=2",
    "train.num_avg=1",
    "train.save_every_minutes=null",
    "train.save_every_steps=2",
    "train.device=cpu",
    "scheduler.initial_lr=0.01",
    "scheduler.final_lr=0.001",
    "scheduler.warm_up_epochs=0",
    "scheduler.scale_by_batch=false",
    "margin_scheduler.final_margin=0.0",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("online")
    prepare_mini(root / "mini", CORPUS)
    sources = make_synthetic_sources(root / "aug", num_noises=2, num_rirs=2, noise_seconds=1.0)
    out = {"raw": root / "mini" / "mini_train", "root": root, **sources}
    from memsv_cli.data.shards import make_shards

    make_shards(out["raw"], root / "shards", utts_per_shard=10)
    out["shard"] = root / "shards"
    return out


def online_config(corpus: dict[str, Path], kind: str, *extra: str) -> dict:
    sources = [f"data.aug_sources.{k}={corpus[k]}" for k in ("rirs", "noise", "music")]
    sources.append(f"data.aug_sources.babble={corpus['raw']}")
    return resolve_config(None, [f"data.type={kind}", f"data.dir={corpus[kind]}", *ONLINE, *sources, *extra])


def _opts(**kw: object) -> LoaderOptions:
    base = {"chunk_frames": 50, "batch_size": 4, "seed": 3, "speed_perturb": True, "aug_prob": 0.6}
    return LoaderOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_raw_samples_have_the_chunk_shape_tripled_labels_and_are_deterministic(corpus: dict) -> None:
    source = load_training_source("raw", corpus["raw"])
    aug = {k: str(corpus[k]) for k in ("rirs", "noise", "music")}
    plan, data = source.plan_and_dataset(_opts(aug_sources=aug))
    assert source.num_items == 36 and source.num_classes(True) == 18 and plan.steps_per_epoch == 9
    x, label = data[(5, 1234)]
    assert x.shape == (50, 80) and x.dtype == torch.float32
    assert torch.allclose(x.mean(0), torch.zeros(80), atol=1e-4)  # CMN
    assert torch.equal(data[(5, 1234)][0], x) and not torch.equal(data[(5, 99)][0], x)
    base = source.data.labels[5]
    labels = [data[(5, seed)][1] for seed in range(300)]
    assert set(labels) == {base, base + 6, base + 12}  # speed 1.0 / 0.9 / 1.1: new speakers
    for speed in range(3):  # 100 each +- 4 binomial sigma
        assert abs(labels.count(base + 6 * speed) - 100) < 33


def test_shard_stream_is_one_pass_per_epoch_and_independent_of_workers(corpus: dict) -> None:
    source = load_training_source("shard", corpus["shard"])
    plan, _ = source.plan_and_dataset(_opts(shuffle_buffer=7, aug_prob=0.0))
    assert source.num_items == 36 and plan.steps_per_epoch == 9
    plan.set_epoch(0)
    keys = [m.key for m in plan.stream()]
    assert len(keys) == 36 and len(set(keys)) == 36  # every utterance once
    plan.set_epoch(1)
    assert [m.key for m in plan.stream()] != keys  # another epoch, another order
    plan.set_epoch(0)
    one = list(plan)  # one process: the micro-batches in order

    def by_worker(w: int, workers: int) -> list:
        from unittest import mock

        info = mock.Mock(id=w, num_workers=workers)
        with mock.patch("memsv_cli.data.shard_stream.get_worker_info", return_value=info):
            return list(plan)

    two = [b for pair in zip(by_worker(0, 2), by_worker(1, 2), strict=False) for b in pair] + by_worker(0, 2)[
        4:
    ]
    assert len(one) == len(two) == 9
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a.feats, b.feats) and torch.equal(a.labels, b.labels)
    plan.set_epoch(0, start_step=5)  # resuming: the same micro-batches from step 5 on
    assert all(torch.equal(a.feats, b.feats) for a, b in zip(one[5:], list(plan), strict=True))


@pytest.mark.parametrize("kind", ["raw", "shard"])
def test_online_training_resumes_mid_epoch_bit_identically(corpus: dict, tmp_path: Path, kind: str) -> None:
    cfg = online_config(corpus, kind)
    straight = train(cfg, tmp_path / "straight")
    assert straight.step == 12 and straight.history[-1]["bad_samples"] == 0
    os.environ["MEMSV_FAULT_INJECT"] = "TERM@7"
    try:
        stopped = train(cfg, tmp_path / "resumed")
    finally:
        del os.environ["MEMSV_FAULT_INJECT"]
    assert stopped.stopped_by == "SIGTERM" and stopped.step == 8 and stopped.epochs_done == 1
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert resumed.step == 12
    a, b = (load_checkpoint(p / "models/last.pt") for p in (tmp_path / "straight", tmp_path / "resumed"))
    assert a["head"]["weight"].shape == (18, 32)  # 6 speakers x 3 speeds
    for part in ("model", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


def test_unreadable_audio_is_skipped_and_counted_then_stops_past_the_limit(
    corpus: dict, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    wav_scp = (corpus["raw"] / "wav.scp").read_text().splitlines()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    key = wav_scp[3].split()[0]
    wav_scp[3] = f"{key} {broken}"
    (bad / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (bad / "utt2spk").write_text((corpus["raw"] / "utt2spk").read_text())
    cfg = online_config(corpus, "raw", f"data.dir={bad}", "train.epochs=1", "data.max_bad_fraction=0.05")
    done = train(cfg, tmp_path / "tolerated")
    assert done.history[-1]["bad_samples"] == 1  # 1 of 36 < 5%
    assert f"warning: skipped {key}: " in (tmp_path / "tolerated/train.log").read_text()
    cfg = online_config(corpus, "raw", f"data.dir={bad}", "train.epochs=1", "data.max_bad_fraction=0.01")
    with pytest.raises(
        MemsvError, match=r"1 training samples of epoch 1 could not be read, more than .* 0.01"
    ):
        train(cfg, tmp_path / "refused")


def test_data_type_auto_reads_the_dir_and_refuses_what_cannot_work(corpus: dict, tmp_path: Path) -> None:
    from memsv_cli.data.training import detect_type

    assert detect_type(corpus["shard"]) == "shard" and detect_type(corpus["raw"]) == "raw"
    with pytest.raises(MemsvError, match="speed_perturb' needs data.type raw or shard"):
        resolve_config(None, ["data.type=feat", "data.speed_perturb=true"])
    with pytest.raises(MemsvError, match="aug_prob' > 0 needs data.aug_sources"):
        resolve_config(None, ["data.type=raw", "data.aug_prob=0.6"])
    # auto: decided once the dir is read
    cfg = resolve_config(None, [*ONLINE, f"data.dir={corpus['raw']}", "data.aug_prob=0.6"])
    with pytest.raises(MemsvError, match="holds audio and data.aug_prob is 0.6: set data.aug_sources"):
        train(cfg, tmp_path / "no_sources")
    with pytest.raises(MemsvError, match="no shard.list, feats.scp, wav.scp: not a training dir"):
        train(resolve_config(None, [*ONLINE, f"data.dir={tmp_path}"]), tmp_path / "nothing")


def test_fbank_args_set_the_online_features_which_the_config_records(corpus: dict, tmp_path: Path) -> None:
    """data.fbank_args (WeSpeaker's fbank_args): 40 bins and 20 ms frames reach the chain, the model
    trains on them, and the config records them for embedding audio later."""
    args = ["data.fbank_args.num_mel_bins=40", "data.fbank_args.frame_length=20", "model.args.feat_dim=40"]
    config = online_config(corpus, "raw", *args, "train.epochs=1")
    source = load_training_source("raw", corpus["raw"], Settings.from_config(config).data.fbank())
    _, data = source.plan_and_dataset(_opts(aug_prob=0.0))
    assert data[(0, 1)][0].shape == (50, 40) and source.feat_dim == 40
    train(config, tmp_path / "exp")
    features = load_checkpoint(tmp_path / "exp" / "models" / "final_model.pt")["config"]["features"]
    assert features["num_mel_bins"] == 40 and features["frame_length_ms"] == 20.0
    # 80-dim model, 40-bin chain: one line before any training
    with pytest.raises(MemsvError, match="gives 40-dim features but model.args.feat_dim is 80"):
        train(online_config(corpus, "raw", *args[:2], "train.epochs=1"), tmp_path / "exp80")
    with pytest.raises(MemsvError, match="frame_shift' must be <="):
        resolve_config(None, ["data.fbank_args.frame_shift=30"])


def test_a_config_saved_before_fbank_args_resolves_with_their_defaults() -> None:
    saved = resolve_config(None, ONLINE)
    del saved["data"]["fbank_args"]
    assert resolve_config(None, [], base=saved)["data"]["fbank_args"]["num_mel_bins"] == 80
    assert "data.fbank_args.num_mel_bins" not in diff_keys(with_defaults(saved), resolve_config(None, ONLINE))
