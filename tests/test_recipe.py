"""The VoxCeleb recipe: its shell tools, its local/ scripts, and a shortened mini run of every stage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import pytest
import torch
import yaml

from memsv_cli.data.kaldi_dir import load_data_dir, read_table, write_data_dir
from memsv_cli.train.precision import native_bf16

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "voxceleb"
TOOLS = ROOT / "tools"
LOCAL = ROOT / "local"


def run(
    cmd: list[str] | str, cwd: Path | None = None, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "LC_ALL": "C"}
    env.update(kw.pop("env", {}))
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str), check=False, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def make_dir(path: Path, utts: dict[str, str], prefix: str = "") -> None:
    """A data dir of ``{utt: spk}`` with fake wav paths."""
    write_data_dir(
        path, {prefix + u: f"/x/{u}.wav" for u in utts}, {prefix + u: prefix + s for u, s in utts.items()}
    )


UTTS = {f"id{s}/v/{u:05d}": f"id{s}" for s in range(1, 4) for u in range(1, 5)}  # 3 speakers x 4 utts


# ------------------------------------------------------------------------------------------------
# tools/parse_options.sh
# ------------------------------------------------------------------------------------------------
SCRIPT = """#!/usr/bin/env bash
stage=1
stop_stage=8
exp_dir=exp/a
aug=false
. {tools}/parse_options.sh || exit 1
echo "$stage|$stop_stage|$exp_dir|$aug|$*"
"""


@pytest.fixture()
def opts_script(tmp_path: Path) -> Path:
    path = tmp_path / "s.sh"
    path.write_text(SCRIPT.format(tools=TOOLS))
    return path


def test_parse_options_accepts_dashes_underscores_and_equals(opts_script: Path) -> None:
    out = run(
        [
            "bash",
            str(opts_script),
            "--stage",
            "3",
            "--stop-stage",
            "4",
            "--exp_dir=exp/b c",
            "--aug",
            "true",
            "x",
            "y",
        ]
    ).stdout
    assert out.strip() == "3|4|exp/b c|true|x y"


def test_parse_options_rejects_unknown_options_and_non_boolean_flags(opts_script: Path) -> None:
    bad = run(["bash", str(opts_script), "--stgae", "3"], check=False)
    assert bad.returncode != 0 and "invalid option --stgae" in bad.stderr
    bad = run(["bash", str(opts_script), "--aug", "yes"], check=False)
    assert bad.returncode != 0 and "true or false" in bad.stderr
    bad = run(["bash", str(opts_script), "--stage"], check=False)
    assert bad.returncode != 0 and "needs a value" in bad.stderr


def test_run_sh_rejects_unknown_options_and_lists_its_variables() -> None:
    bad = run([str(RECIPE / "run.sh"), "--stop_stgae", "3"], check=False)
    assert bad.returncode != 0 and "invalid option --stop-stgae" in bad.stderr
    helped = run([str(RECIPE / "run.sh"), "--help"])
    for name in ("--stage", "--stop-stage", "--exp-dir", "--gpus", "--num-nodes", "--master-addr", "--aug"):
        assert f"  {name} " in helped.stderr


# ------------------------------------------------------------------------------------------------
# tools/combine_data.sh, subset_data_dir.sh, filter_scp.sh
# ------------------------------------------------------------------------------------------------
def test_combine_data_merges_sorted_and_rebuilds_spk2utt(tmp_path: Path) -> None:
    make_dir(tmp_path / "a", UTTS)
    make_dir(tmp_path / "b", UTTS, prefix="sp1.1-")
    run([str(TOOLS / "combine_data.sh"), str(tmp_path / "c"), str(tmp_path / "a"), str(tmp_path / "b")])
    combined = load_data_dir(tmp_path / "c")  # validates sorting and spk2utt against utt2spk
    assert len(combined.wav_scp) == 24 and len(combined.spk2utt) == 6


def test_combine_data_refuses_duplicate_utterances(tmp_path: Path) -> None:
    make_dir(tmp_path / "a", UTTS)
    bad = run(
        [str(TOOLS / "combine_data.sh"), str(tmp_path / "c"), str(tmp_path / "a"), str(tmp_path / "a")],
        check=False,
    )
    assert bad.returncode != 0 and "appears in more than one source" in bad.stderr
    assert not (tmp_path / "c" / "wav.scp").exists()


@pytest.mark.parametrize(
    ("args", "num_utts", "num_spks"),
    [
        (["5"], 5, None),
        (["--first", "{src}", "5"], 5, 2),
        (["--per-spk", "{src}", "2"], 6, 3),
        (["--speakers", "{src}", "2"], 8, 2),
    ],
)
def test_subset_data_dir_modes(tmp_path: Path, args: list[str], num_utts: int, num_spks: int | None) -> None:
    src = tmp_path / "a"
    make_dir(src, UTTS)
    argv = [a.format(src=src) for a in args] if "{src}" in " ".join(args) else [str(src), *args]
    run([str(TOOLS / "subset_data_dir.sh"), *argv, str(tmp_path / "d")])
    sub = load_data_dir(tmp_path / "d")
    assert len(sub.wav_scp) == num_utts
    assert set(sub.wav_scp) <= set(UTTS)
    if num_spks is not None:
        assert len(sub.spk2utt) == num_spks


def test_subset_data_dir_random_choice_is_reproducible(tmp_path: Path) -> None:
    make_dir(tmp_path / "a", UTTS)
    picks = []
    for out, seed in (("d1", "1"), ("d2", "1"), ("d3", "2")):
        run(
            [str(TOOLS / "subset_data_dir.sh"), "--seed", seed, str(tmp_path / "a"), "6", str(tmp_path / out)]
        )
        picks.append(set(read_table(tmp_path / out / "utt2spk")))
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_subset_by_utt_list_filters_every_per_utterance_file(tmp_path: Path) -> None:
    make_dir(tmp_path / "a", UTTS)
    (tmp_path / "a" / "utt2num_frames").write_text("".join(f"{u} 100\n" for u in sorted(UTTS)))
    keep = sorted(UTTS)[2:5]
    (tmp_path / "list").write_text("\n".join(keep) + "\n")
    run(
        [
            str(TOOLS / "subset_data_dir.sh"),
            "--utt-list",
            str(tmp_path / "list"),
            str(tmp_path / "a"),
            str(tmp_path / "d"),
        ]
    )
    assert list(read_table(tmp_path / "d" / "utt2num_frames")) == keep
    assert list(load_data_dir(tmp_path / "d").wav_scp) == keep


# ------------------------------------------------------------------------------------------------
# local/: md5 checks, MUSAN / RIR preparation
# ------------------------------------------------------------------------------------------------
def test_check_md5_flags_a_corrupt_archive_and_a_missing_required_one(tmp_path: Path) -> None:
    listed = {
        line.split()[1]: line.split()[0]
        for line in (LOCAL / "archives.md5").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert listed["musan.tar.gz"] == "0c472d4fc0c5141eca47ad1ffeb2a7df"
    (tmp_path / "musan.tar.gz").write_bytes(b"not the archive")
    bad = run([str(LOCAL / "check_md5.sh"), str(tmp_path)], check=False)
    assert bad.returncode != 0 and "wrong md5 for" in bad.stderr
    (tmp_path / "musan.tar.gz").unlink()
    ok = run([str(LOCAL / "check_md5.sh"), str(tmp_path)], check=False)
    assert ok.returncode == 0  # nothing present, nothing required
    bad = run([str(LOCAL / "check_md5.sh"), "--require", "vox2_aac.zip", str(tmp_path)], check=False)
    assert bad.returncode != 0 and "missing" in bad.stderr and "vox2.html" in bad.stderr


def test_check_md5_joins_split_archives(tmp_path: Path) -> None:
    (tmp_path / "vox2_dev_aac_partaa").write_bytes(b"abc")
    (tmp_path / "vox2_dev_aac_partab").write_bytes(b"def")
    run([str(LOCAL / "check_md5.sh"), str(tmp_path)], check=False)
    assert (tmp_path / "vox2_aac.zip").read_bytes() == b"abcdef"
    assert hashlib.md5(b"abcdef").hexdigest() != "bbc063c46078a602ca71605645c2a402"


def test_prepare_musan_and_rirs_make_valid_data_dirs(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for kind, sub in (("noise", "free-sound"), ("music", "fma"), ("speech", "us-gov")):
        (raw / "musan" / kind / sub).mkdir(parents=True)
        for i in (2, 1):
            (raw / "musan" / kind / sub / f"{kind}-{sub}-{i:04d}.wav").touch()
    for room in ("smallroom", "mediumroom", "largeroom"):
        (raw / "RIRS_NOISES" / "simulated_rirs" / room / "Room001").mkdir(parents=True)
        (raw / "RIRS_NOISES" / "simulated_rirs" / room / "Room001" / "Room001-00001.wav").touch()
    run([str(LOCAL / "prepare_musan.sh"), "--raw_dir", str(raw), str(tmp_path / "data")])
    run([str(LOCAL / "prepare_rirs.sh"), "--raw_dir", str(raw), str(tmp_path / "data")])
    for kind, sub in (("noise", "free-sound"), ("music", "fma"), ("speech", "us-gov")):
        musan = load_data_dir(tmp_path / "data" / f"musan_{kind}")
        assert list(musan.wav_scp) == [f"{kind}-{sub}-0001", f"{kind}-{sub}-0002"]
        assert musan.wav_scp[f"{kind}-{sub}-0001"] == str(
            raw / "musan" / kind / sub / f"{kind}-{sub}-0001.wav"
        )
    rirs = load_data_dir(tmp_path / "data" / "rirs")
    assert list(rirs.wav_scp) == ["mediumroom/Room001/Room001-00001", "smallroom/Room001/Room001-00001"]


# ------------------------------------------------------------------------------------------------
# The whole recipe, shortened, on the mini corpus
# ------------------------------------------------------------------------------------------------
STAGES_CLI = (
    "prepare-data",
    "extract-fbank",
    "train",
    "average-model",
    "extract-embeddings",
    "score",
    "profile-memory",
    "augment-data",
    "speed-perturb",
)


def _missing_commands() -> list[str]:
    from memsv_cli.cli import app

    names = {c.name for c in app.registered_commands}
    return [c for c in STAGES_CLI if c not in names]


def _recipe_copy(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A private copy of the recipe (configs, scripts; symlinks to local/ and tools/ resolved), so a
    run writes nothing into the checkout."""
    recipe = tmp_path_factory.mktemp(name) / "voxceleb"
    shutil.copytree(
        RECIPE,
        recipe,
        symlinks=False,
        ignore=shutil.ignore_patterns("data", "fbank", "shards", "exp", "mini"),
    )
    return recipe


TINY_CORPUS = [
    "--mini_opts",
    "--num-speakers 6 --utts-per-speaker 6 --num-test-speakers 4 --test-utts-per-speaker 4",
]
TINY_TRAIN = (
    "--epochs 2 --batch-size 12 --set model.args.base_width=4 --set model.args.embed_dim=32 "
    "--set data.chunk_frames=64 --set train.num_avg=2 "
    "--set train.memory_check=false"  # tests/test_memory_plan.py covers it (~3 s per training here)
)


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The default path (shards, WeSpeaker's online chain with speed perturbation), stages 1-8."""
    missing = _missing_commands()
    if missing:
        pytest.fail(f"memsv commands missing: {', '.join(missing)}")
    recipe = _recipe_copy(tmp_path_factory, "recipe")
    common = ["--data", "mini", "--exp_dir", "exp/tiny", "--nj", "2", *TINY_CORPUS]
    common += ["--train_opts", TINY_TRAIN + " --set data.speed_perturb=true --set data.aug_prob=0.6"]
    common += ["--profile_opts", "--batch-size 4 --frames 64", "--lm_epochs", "1", "--lm_chunk_frames", "96"]
    common += ["--lm_batch_size", "12"]
    first = run([str(recipe / "run.sh"), *common, "--stop_stage", "8"], cwd=recipe, timeout=900)
    return {"recipe": recipe, "common": common, "first": first}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~2-3 min on 2 idle cores; a shared machine is several times slower
def test_mini_recipe_runs_every_stage(mini_run: dict) -> None:
    recipe: Path = mini_run["recipe"]
    out = mini_run["first"].stdout + mini_run["first"].stderr
    data, exp = recipe / "data" / "mini", recipe / "exp" / "tiny"
    # stage 1: the corpus and the stand-ins for MUSAN / RIRs (babble: the training speech)
    train = load_data_dir(data / "mini_train")
    for kind in ("musan_noise", "musan_music", "musan_speech", "rirs"):
        assert (data / kind / "wav.scp").is_file()
    # stage 2: shards of the training set; features of the clean training set and the test set
    shards = recipe / "shards" / "mini" / "mini_train"
    assert read_table(shards / "utt2spk") == read_table(data / "mini_train" / "utt2spk")
    for x in ("mini_train", "mini_test"):
        assert (recipe / "fbank" / "mini" / x / "feats.scp").is_file()
    # stage 3-4: trained from the shards, with speed perturbation (3 x the speakers as classes)
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["data"]["type"] == "shard" and config["data"]["dir"].endswith("shards/mini/mini_train")
    assert config["data"]["aug_root"].endswith("data/mini")
    # the demo config's precision auto, resolved for this CPU
    assert config["train"]["precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    head = torch.load(exp / "models" / "avg_model.pt", weights_only=False)["head"]["weight"]
    assert head.shape[0] == 3 * len(train.spk2utt)
    assert (exp / "train_curve.png").is_file()
    assert (exp / "embeddings" / "mini_test" / "xvector.scp").is_file()
    # stage 5-6: score files, results and DET plots
    for scores in ("scores", "scores_asnorm"):
        (result,) = json.loads((exp / scores / "results.json").read_text())["results"]
        assert result["trials"] == "mini.kaldi" and result["num_trials"] == 120  # 16 test utts, all pairs
        assert 0.0 <= result["eer"] <= 100.0
        assert len((exp / scores / "mini.kaldi.score").read_text().splitlines()) == 120
        assert (exp / scores / "mini.kaldi.det.png").is_file()
        (entry,) = json.loads((exp / scores / "thresholds.json").read_text())["lists"]
        assert entry["transform"] == str(exp / "lda" / "lda.mat")  # --lda_dim max: the synthetic default
    # the LDA back-end: 6 training speakers -> 5 dimensions, affine over the 32-dim embeddings
    assert kaldiio.load_mat(str(exp / "lda" / "lda.mat")).shape == (5, 33)
    assert "compute-lda: 36 embeddings of 6 speakers, 32 -> 5 dims" in out
    # stage 7: memory profile of the trained setup (read back from the run's config)
    memory = json.loads((exp / "memory.json").read_text())
    assert memory["model"] == "rev_resnet18" and memory["setup"]["optimizer"] == "adam8bit"
    assert memory["setup"]["base_width"] == 4 and memory["bytes"]["total"] > 0
    assert memory["setup"]["num_speakers"] == 3 * len(train.spk2utt)  # the head of online speed perturbation
    # stage 8: large-margin fine-tuning from the averaged model: no speed perturbation, head sliced back
    lm = recipe / "exp" / "tiny-LM"
    lm_config = yaml.safe_load((lm / "config.yaml").read_text())
    assert lm_config["data"]["chunk_frames"] == 96 and lm_config["margin_scheduler"]["final_margin"] == 0.5
    assert lm_config["data"]["speed_perturb"] is False and lm_config["train"]["batch_size"] == 12
    assert lm_config["train"]["init_model"].endswith("avg_model.pt")
    lm_head = torch.load(lm / "models" / "avg_model.pt", weights_only=False)["head"]["weight"]
    assert lm_head.shape[0] == len(train.spk2utt)
    assert "head from its first 6 of 18 classes" in (lm / "train.log").read_text()
    assert (lm / "scores_asnorm" / "mini.kaldi.score").is_file()
    # the tables the demo promises
    assert "EER (%)" in out and "minDCF" in out and "optimizer states" in out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_feat_path_with_offline_copies_draws_one_per_original(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """--data_type feat with Kaldi-style speed-perturbed and augmented copies (stages 1-3)."""
    recipe = _recipe_copy(tmp_path_factory, "feat")
    args = [str(recipe / "run.sh"), "--data", "mini", "--exp_dir", "exp/feat", "--nj", "2", *TINY_CORPUS]
    args += ["--data_type", "feat", "--speed_perturb", "true", "--aug", "true", "--aug_types", "reverb noise"]
    args += ["--train_opts", TINY_TRAIN.replace("--epochs 2", "--epochs 1"), "--stop_stage", "3"]
    run(args, cwd=recipe, timeout=900)
    data = recipe / "data" / "mini"
    train, combined = load_data_dir(data / "mini_train"), load_data_dir(data / "mini_train_sp_aug")
    assert len(combined.wav_scp) == 3 * len(train.wav_scp) * 3  # 3 speeds x (clean + 2 copies)
    assert (recipe / "fbank" / "mini" / "mini_train_sp_aug" / "feats.scp").is_file()
    log = (recipe / "exp" / "feat" / "train.log").read_text()
    # an epoch is one pass over the 36 originals, not over the 324 copies
    assert "on 36 feat utts of 18 speakers" in log and "3 steps/epoch" in log
    # offline copies are for feat only: the online path refuses them
    done = run([str(recipe / "run.sh"), "--data", "mini", "--aug", "true"], cwd=recipe, check=False)
    assert done.returncode == 1 and "augments on the fly" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_single_stage_reruns_from_the_previous_stage_files(mini_run: dict) -> None:
    recipe: Path = mini_run["recipe"]
    exp = recipe / "exp" / "tiny"
    scores = exp / "scores" / "results.json"
    before = json.loads(scores.read_text())
    scores.unlink()
    run([str(recipe / "run.sh"), *mini_run["common"], "--stage", "5", "--stop_stage", "5"], cwd=recipe)
    assert json.loads(scores.read_text()) == before  # same embeddings -> same scores
    # plain cosine instead of the LDA back-end, and a bad back-end value: one line, nothing run
    common = [*mini_run["common"], "--stage", "5", "--stop_stage", "5"]
    run([str(recipe / "run.sh"), *common, "--lda_dim", "none"], cwd=recipe)
    (entry,) = json.loads((exp / "scores" / "thresholds.json").read_text())["lists"]
    assert entry["transform"] is None and json.loads(scores.read_text()) != before
    done = run([str(recipe / "run.sh"), *common, "--lda_dim", "0"], cwd=recipe, check=False)
    assert done.returncode == 1 and "--lda_dim must be none, max or a positive number, got '0'" in done.stderr
    run([str(recipe / "run.sh"), *common], cwd=recipe)  # back to the default for the tests after this one
    assert json.loads(scores.read_text()) == before


def _stage_3(mini_run: dict, exp: str, fault: str, *extra: str) -> subprocess.CompletedProcess:
    """Stage 3 alone into ``exp`` (2 epochs of 3 steps, a step checkpoint every 2) with a fault."""
    recipe: Path = mini_run["recipe"]
    opts = TINY_TRAIN.replace("train.num_avg=2", "train.num_avg=1") + " --set train.save_every_steps=2"
    args = [str(recipe / "run.sh"), *mini_run["common"], "--exp_dir", exp, "--train_opts", opts, *extra]
    return run(args, cwd=recipe, check=False, env={"MEMSV_FAULT_INJECT": fault}, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_max_restarts_lets_torchrun_restart_a_killed_training_which_resumes(mini_run: dict) -> None:
    done = _stage_3(
        mini_run, "exp/restarts", "KILL@3", "--stage", "3", "--stop_stage", "3", "--max_restarts", "1"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    exp = mini_run["recipe"] / "exp/restarts"
    log = (exp / "train.log").read_text()
    assert (
        "resumed from exp/restarts/models/checkpoint_00000002.pt (epoch 1, step 2, torchrun restart 1)" in log
    )
    assert (exp / "models/final_model.pt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stopped_training_stops_the_recipe_before_averaging(mini_run: dict) -> None:
    done = _stage_3(mini_run, "exp/stopped", "TERM@2", "--stage", "3", "--stop_stage", "4")
    assert done.returncode == 1
    assert "memsv train: stopped by SIGTERM after step 3" in done.stderr
    assert (
        "training in exp/stopped stopped before its last epoch; continue it with --stage 3 --resume true"
        in (done.stderr)
    )
    exp = mini_run["recipe"] / "exp/stopped"
    assert (exp / "models/last.pt").is_file() and not (exp / "models/avg_model.pt").exists()
