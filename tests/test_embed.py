"""`extract-embeddings`: batched equals one-by-one, mean normalisation, speaker means, ark/scp output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from memsv_cli.cli import main
from memsv_cli.data.fbank import FbankConfig
from memsv_cli.embed import extract_embeddings, mean_normalise, plan_batches
from memsv_cli.errors import MemsvError
from memsv_cli.models import get_model
from memsv_cli.train.checkpoint import save_checkpoint

FEAT_DIM = 80
MODEL = {"name": "resnet34", "args": {"feat_dim": FEAT_DIM, "embed_dim": 32, "base_width": 8}}
# Three lengths shared by several utterances (batched together) and two unique ones.
LENGTHS = {
    "spkA/u1": 48,
    "spkA/u2": 64,
    "spkA/u3": 48,
    "spkB/u1": 64,
    "spkB/u2": 48,
    "spkB/u3": 37,
    "spkC/u1": 64,
    "spkC/u2": 80,
    "spkC/u3": 48,
}


@pytest.fixture()
def exp(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = get_model(MODEL["name"], **MODEL["args"])
    # Non-trivial BatchNorm statistics, so that eval-mode BN is not the identity.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    ckpt = tmp_path / "exp" / "models" / "avg_model.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": {"model": MODEL}})
    feats = tmp_path / "fbank"
    feats.mkdir()
    rng = np.random.default_rng(0)
    # An offset per utterance: mean normalisation must remove it.
    mats = {
        u: (rng.normal(size=(n, FEAT_DIM)) + rng.normal(size=FEAT_DIM) * 3).astype(np.float32)
        for u, n in LENGTHS.items()
    }
    with kaldiio.WriteHelper(f"ark,scp:{feats / 'feats.ark'},{feats / 'feats.scp'}") as writer:
        for utt in sorted(mats):
            writer(utt, mats[utt])
    (feats / "utt2num_frames").write_text("".join(f"{u} {LENGTHS[u]}\n" for u in sorted(LENGTHS)))
    (feats / "utt2spk").write_text("".join(f"{u} {u.split('/')[0]}\n" for u in sorted(LENGTHS)))
    return {"ckpt": ckpt, "feats": feats, "dir": tmp_path, "model": model, "mats": mats}


def _read(scp: Path) -> dict[str, np.ndarray]:
    return dict(kaldiio.load_scp_sequential(str(scp)))


def test_plan_batches_groups_only_identical_lengths() -> None:
    batches = plan_batches(LENGTHS, batch_size=3, max_batch_frames=10_000)
    for batch in batches:
        assert len({LENGTHS[u] for u in batch}) == 1
        assert len(batch) <= 3
    assert sorted(u for b in batches for u in b) == sorted(LENGTHS)
    assert [len(b) for b in batches] == [1, 3, 1, 3, 1]  # 37 | 48 x4 | 64 x3 | 80
    # The frame cap splits long utterances into smaller batches (here 100 // 48 = 2 per batch).
    capped = plan_batches(LENGTHS, batch_size=8, max_batch_frames=100)
    assert max(len(b) for b in capped) == 2 and all(len(b) == 1 for b in capped if LENGTHS[b[0]] > 50)


def test_batched_embeddings_equal_one_by_one(exp) -> None:
    batched = extract_embeddings(exp["ckpt"], exp["feats"], exp["dir"] / "b", batch_size=4, progress=False)
    single = extract_embeddings(exp["ckpt"], exp["feats"], exp["dir"] / "s", batch_size=1, progress=False)
    assert batched.num_batches == 4 and single.num_batches == len(LENGTHS)
    a, b = _read(batched.xvector_scp), _read(single.xvector_scp)
    assert list(a) == sorted(LENGTHS) and list(b) == list(a)
    for utt in a:
        np.testing.assert_allclose(a[utt], b[utt], atol=1e-5, rtol=0)
    # And equal to the model applied directly to the mean-normalised utterance.
    model = exp["model"].eval()
    with torch.no_grad():
        for utt, mat in exp["mats"].items():
            want = model(torch.from_numpy(mean_normalise(mat))[None])[0].numpy()
            np.testing.assert_allclose(a[utt], want, atol=1e-5, rtol=0)
            raw = model(torch.from_numpy(mat)[None])[0].numpy()
            assert np.abs(raw - want).max() > 1e-3, "mean normalisation must change the input"


def test_worker_processes_and_missing_utt2num_frames_give_the_same_embeddings(exp) -> None:
    ref = _read(extract_embeddings(exp["ckpt"], exp["feats"], exp["dir"] / "r", progress=False).xvector_scp)
    (exp["feats"] / "utt2num_frames").unlink()
    other = extract_embeddings(exp["ckpt"], exp["feats"], exp["dir"] / "w", nj=1, progress=False)
    got = _read(other.xvector_scp)
    assert list(got) == list(ref)
    for utt in ref:
        np.testing.assert_allclose(got[utt], ref[utt], atol=1e-5, rtol=0)


def test_spk_mean_writes_speaker_means(exp) -> None:
    s = extract_embeddings(exp["ckpt"], exp["feats"], exp["dir"] / "e", spk_mean=True, progress=False)
    assert s.num_speakers == 3 and s.spk_xvector_scp is not None
    utt = _read(s.xvector_scp)
    spk = _read(s.spk_xvector_scp)
    assert list(spk) == ["spkA", "spkB", "spkC"]
    for name, vec in spk.items():
        want = np.mean([v for u, v in utt.items() if u.startswith(name + "/")], axis=0)
        np.testing.assert_allclose(vec, want, atol=1e-6)


def test_spk_mean_without_utt2spk_is_a_clear_error(exp) -> None:
    (exp["feats"] / "utt2spk").unlink()
    with pytest.raises(MemsvError, match="--spk-mean needs .*utt2spk"):
        extract_embeddings(exp["ckpt"], exp["feats"], exp["dir"] / "e", spk_mean=True, progress=False)


def test_rerun_replaces_outputs_and_leaves_no_temporary_files(exp) -> None:
    out = exp["dir"] / "e"
    extract_embeddings(exp["ckpt"], exp["feats"], out, progress=False)
    (out / "xvector.scp").write_text("stale 0\n")
    extract_embeddings(exp["ckpt"], exp["feats"], out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["xvector.ark", "xvector.scp"]
    # Absolute ark paths (as feats.scp from extract-fbank): the scp works from any directory.
    first_line = (out / "xvector.scp").read_text().splitlines()[0]
    assert first_line.split()[1].startswith(str((out / "xvector.ark").resolve()) + ":")
    assert list(_read(out / "xvector.scp")) == sorted(LENGTHS)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_extract_then_score(exp, capsys) -> None:
    out = exp["dir"] / "exp" / "embeddings" / "test"
    code, stdout, err = _run(
        [
            "extract-embeddings",
            "--checkpoint",
            str(exp["ckpt"]),
            "--data",
            str(exp["feats"]),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--spk-mean",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert (out / "xvector.scp").is_file() and (out / "spk_xvector.scp").is_file()
    # Summary rows: entries and dimension of each output.
    assert re.search(r"│\s+9\s+│\s+32\s+│", stdout) and re.search(r"│\s+3\s+│\s+32\s+│", stdout)
    trials = exp["dir"] / "trials"
    utts = sorted(LENGTHS)
    trials.write_text(
        "".join(
            f"{a} {b} {'target' if a[:4] == b[:4] else 'nontarget'}\n"
            for i, a in enumerate(utts)
            for b in utts[i + 1 :]
        )
    )
    code, stdout, err = _run(
        [
            "score",
            "--trials",
            str(trials),
            "--embeddings",
            str(out / "xvector.scp"),
            "--norm",
            "asnorm",
            "--cohort",
            str(out / "spk_xvector.scp"),
            "--top-n",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(stdout)["results"][0]
    assert result["num_trials"] == 36 and result["num_target"] == 9
    assert 0.0 <= result["eer"] <= 100.0


def test_cli_reports_missing_checkpoint_in_one_line(exp, capsys) -> None:
    code, _, err = _run(
        [
            "extract-embeddings",
            "--checkpoint",
            str(exp["dir"] / "nope.pt"),
            "--data",
            str(exp["feats"]),
            "--out",
            str(exp["dir"] / "e"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 1 and "no such checkpoint" in err and len(err.strip().splitlines()) == 1


def test_nan_features_are_reported_with_the_utterance(exp) -> None:
    feats = exp["dir"] / "nanfeats"
    feats.mkdir()
    mats = dict(exp["mats"])
    mats["spkB/u3"] = mats["spkB/u3"].copy()
    mats["spkB/u3"][5, 3] = np.nan
    with kaldiio.WriteHelper(f"ark,scp:{feats / 'feats.ark'},{feats / 'feats.scp'}") as writer:
        for utt in sorted(mats):
            writer(utt, mats[utt])
    with pytest.raises(MemsvError, match="NaN/inf embedding for 'spkB/u3'"):
        extract_embeddings(exp["ckpt"], feats, exp["dir"] / "e", progress=False)
    assert not (exp["dir"] / "e" / "xvector.scp").exists()


def test_device_choice_is_validated() -> None:
    from memsv_cli.embed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MemsvError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MemsvError, match="CUDA is not available"):
            resolve_device("cuda:0")
        assert resolve_device("auto") == torch.device("cpu")


def test_empty_utterance_is_rejected_before_extraction(exp) -> None:
    feats = exp["dir"] / "emptyfeats"
    feats.mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{feats / 'feats.ark'},{feats / 'feats.scp'}") as writer:
        writer("a", np.zeros((0, FEAT_DIM), dtype=np.float32))
        writer("b", np.ones((20, FEAT_DIM), dtype=np.float32))
    with pytest.raises(MemsvError, match="1 utterance\\(s\\) have no frames, first 'a'"):
        extract_embeddings(exp["ckpt"], feats, exp["dir"] / "e", progress=False)


def test_a_feature_error_in_a_worker_process_is_one_line(exp) -> None:
    """utt2num_frames disagreeing with the matrices, found in a DataLoader worker: the same one-line
    error as in the main process, without the worker's traceback."""
    lengths = exp["feats"] / "utt2num_frames"
    table = dict(line.split() for line in lengths.read_text().splitlines())
    first, other = sorted(table, key=lambda u: int(table[u]))[:: len(table) - 1]
    table[first] = table[other]  # claimed as long as another: batched together, stacked, refused
    lengths.write_text("".join(f"{u} {n}\n" for u, n in sorted(table.items())))
    for nj in (0, 1):
        with pytest.raises(MemsvError) as err:
            out = exp["dir"] / f"e{nj}"
            extract_embeddings(exp["ckpt"], exp["feats"], out, batch_size=8, nj=nj, progress=False)
        message = str(err.value)
        assert "utt2num_frames disagrees" in message and "Traceback" not in message and "\n" not in message


def test_arks_made_with_other_fbank_options_than_the_model_are_refused(exp, capsys) -> None:
    """A 20-ms frame shift gives 80-wide matrices like the model's 10-ms ones: only extract-fbank's
    fbank.conf tells them apart. Dither is not compared; arks without fbank.conf are not checked."""
    out = exp["dir"] / "e"
    argv = ["extract-embeddings", "--checkpoint", str(exp["ckpt"]), "--data", str(exp["feats"])]
    argv += ["--out", str(out), "--no-progress"]
    conf = exp["feats"] / "fbank.conf"
    conf.write_text(FbankConfig(frame_shift_ms=20.0, low_freq_hz=0.0).kaldi_conf())
    code, stdout, err = _run(argv, capsys)
    assert (code, stdout) == (1, "")
    head = f"memsv extract-embeddings: error: {conf}: these features differ from the model's ("
    assert err.startswith(head)
    assert "frame_shift_ms 20 against 10, low_freq_hz 0 against 20; extract them again" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    conf.write_text(FbankConfig(dither=1.0).kaldi_conf())  # the model's options (config: memsv defaults)
    assert _run(argv, capsys)[0] == 0
    conf.unlink()
    assert _run(argv, capsys)[0] == 0
