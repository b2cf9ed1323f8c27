"""Using a trained model on audio: extract-embeddings from wav.scp, `memsv embed`, `memsv similarity`, VAD.

One tiny mini corpus and one untrained tiny model (40 mel bins, so the training's feature options must
be found in the experiment, not taken from the defaults) serve every test of the module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import yaml
from test_cli_errors import assert_one_line, run_main, run_memsv

from memsv_cli.data.fbank import FbankConfig, extract_fbank
from memsv_cli.data.kaldi_dir import read_trials, read_wav_scp
from memsv_cli.data.mini import MiniConfig, prepare_mini
from memsv_cli.embed import extract_embeddings, mean_normalise
from memsv_cli.errors import MemsvError
from memsv_cli.inference import feature_options, load_embedder, window_spans
from memsv_cli.models import get_model
from memsv_cli.scoring.metrics import compute_error_rates, eer_from_rates, min_dcf_from_rates
from memsv_cli.similarity import choose_threshold, raw_cosine_lists
from memsv_cli.train.checkpoint import save_checkpoint
from memsv_cli.vad import vad_available

FBANK = FbankConfig(num_mel_bins=40)
MODEL = {"name": "resnet18", "args": {"feat_dim": 40, "embed_dim": 24, "base_width": 4}}
MINI = MiniConfig(
    num_speakers=2,
    utts_per_speaker=2,
    num_test_speakers=3,
    test_utts_per_speaker=3,
    videos_per_speaker=2,
    min_seconds=0.6,
    max_seconds=1.0,
    seed=11,
)


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    prepare_mini(root / "mini", MINI)
    for name in ("mini_train", "mini_test"):
        extract_fbank(root / "mini" / name, root / "fbank" / name, FBANK)
    torch.manual_seed(0)
    model = get_model(MODEL["name"], **MODEL["args"])
    for module in model.modules():  # eval-mode BatchNorm that is not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    exp = root / "exp"
    config = {"model": MODEL, "data": {"type": "feat", "dir": str(root / "fbank" / "mini_train")}}
    save_checkpoint(exp / "models" / "avg_model.pt", {"model": model.state_dict(), "config": config})
    for name in ("mini_train", "mini_test"):
        extract_embeddings(exp / "models" / "avg_model.pt", root / "fbank" / name, exp / "embeddings" / name)
    return {
        "root": root,
        "ckpt": exp / "models" / "avg_model.pt",
        "exp": exp,
        "wavs": read_wav_scp(root / "mini" / "mini_test" / "wav.scp"),
        "test_emb": exp / "embeddings" / "mini_test" / "xvector.scp",
        "train_emb": exp / "embeddings" / "mini_train" / "xvector.scp",
    }


def _read(scp: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in kaldiio.load_scp_sequential(str(scp))}


# ---------------------------------------------------------------------------------------------------
# Features and extract-embeddings from wav.scp


def test_wav_scp_embeddings_equal_the_extract_fbank_path(mini, tmp_path: Path, capsys) -> None:
    ref = _read(mini["test_emb"])  # extract-fbank, then extract-embeddings on feats.scp
    code, _, err = run_main(
        [
            "extract-embeddings",
            "--checkpoint",
            str(mini["ckpt"]),
            "--data",
            str(mini["root"] / "mini" / "mini_test"),  # wav.scp only
            "--out",
            str(tmp_path / "e"),
            "--nj",
            "1",  # features computed in a worker process
            "--spk-mean",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    got = _read(tmp_path / "e" / "xvector.scp")
    assert list(got) == list(ref) and len(got) == 9
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst <= 1e-5, worst
    assert (tmp_path / "e" / "spk_xvector.scp").is_file()


def test_feature_options_come_from_the_experiment(mini, tmp_path: Path) -> None:
    fbank_dir = str(mini["root"] / "fbank" / "mini_train")
    cfg, source = feature_options({"data": {"type": "feat", "dir": fbank_dir}})
    assert cfg == FBANK and source.endswith("fbank.conf")
    dithered = tmp_path / "fbank.conf"
    dithered.write_text(dataclasses.replace(FBANK, dither=1.0, frame_shift_ms=12.5).kaldi_conf())
    cfg, _ = feature_options({}, dithered)
    assert cfg.dither == 0.0 and cfg.frame_shift_ms == 12.5 and cfg.num_mel_bins == 40  # dither off
    # Online features (raw / shard), or no training dir recorded: memsv's defaults.
    assert feature_options({"data": {"type": "raw", "dir": "/gone"}})[0] == FbankConfig()
    assert feature_options({"model": MODEL})[0] == FbankConfig()
    with pytest.raises(MemsvError, match="fbank.conf is missing .* pass --fbank-conf"):
        feature_options({"data": {"type": "feat", "dir": str(tmp_path / "moved")}})
    with pytest.raises(MemsvError, match="80 mel bins, but the model .* takes 40"):
        load_embedder(mini["ckpt"], fbank_conf=_write(tmp_path / "f80.conf", FbankConfig().kaldi_conf()))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_fbank_conf_round_trips_and_rejects_what_it_cannot_honour(tmp_path: Path) -> None:
    cfg = FbankConfig(
        num_mel_bins=64, frame_length_ms=20, frame_shift_ms=8, high_freq_hz=-400, low_freq_hz=40
    )
    assert FbankConfig.from_kaldi_conf(_write(tmp_path / "a.conf", cfg.kaldi_conf())) == cfg
    with pytest.raises(MemsvError, match="b.conf:2: unsupported fbank option --use-energy=true"):
        FbankConfig.from_kaldi_conf(_write(tmp_path / "b.conf", "--num-mel-bins=40\n--use-energy=true\n"))
    with pytest.raises(MemsvError, match="c.conf:1: expected --name=value"):
        FbankConfig.from_kaldi_conf(_write(tmp_path / "c.conf", "num-mel-bins 40\n"))


def test_wav_scp_with_an_unreadable_entry_is_one_line(mini, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first = next(iter(mini["wavs"].items()))
    (data / "wav.scp").write_text(f"{first[0]} {first[1]}\nzz/broken {tmp_path / 'missing.wav'}\n")
    code, _, err = run_main(
        [
            "extract-embeddings",
            "--checkpoint",
            str(mini["ckpt"]),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "e"),
        ]
        + ["--no-progress"],
        capsys,
    )
    assert code == 1
    assert_one_line(err, "memsv extract-embeddings: error:", "wav.scp:2", "'zz/broken'", "no such file")
    assert not (tmp_path / "e" / "xvector.scp").exists()


# ---------------------------------------------------------------------------------------------------
# memsv embed


def _parse_text_vectors(text: str) -> dict[str, np.ndarray]:
    out = {}
    for line in text.splitlines():
        key, rest = line.split("  [ ")
        out[key] = np.array([float(v) for v in rest.rstrip(" ]").split()], dtype=np.float32)
    return out


def test_embed_files_equal_extract_embeddings(mini, tmp_path: Path, capsys) -> None:
    ref = _read(mini["test_emb"])
    utts = list(ref)[:3]
    files = [mini["wavs"][u] for u in utts]
    code, stdout, err = run_main(["embed", *files, "--checkpoint", str(mini["ckpt"])], capsys)
    assert code == 0, err
    printed = _parse_text_vectors(stdout)
    assert list(printed) == files  # input order, keys = the paths as given
    for utt, path in zip(utts, files, strict=True):
        np.testing.assert_allclose(printed[path], ref[utt], atol=1e-5, rtol=1e-6)  # 7 printed digits
    code, _, err = run_main(
        ["embed", *files, "--checkpoint", str(mini["ckpt"]), "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    written = _read(tmp_path / "xvector.scp")
    assert sorted(written) == sorted(files)
    for utt, path in zip(utts, files, strict=True):
        np.testing.assert_allclose(written[path], ref[utt], atol=1e-5, rtol=0)


def test_embed_resamples_a_file_at_another_rate(mini, tmp_path: Path) -> None:
    path = next(iter(mini["wavs"].values()))
    samples, rate = sf.read(path, dtype="float32")
    other = tmp_path / "at32k.wav"
    sf.write(other, soxr.resample(samples, rate, 32000, quality="HQ"), 32000, subtype="FLOAT")
    embedder = load_embedder(mini["ckpt"])
    a, b = embedder.embed_file(path), embedder.embed_file(other)
    assert len(embedder.read(other)) == pytest.approx(len(samples), abs=2)
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.95


def test_window_averaging_is_the_mean_of_window_embeddings(mini) -> None:
    assert window_spans(250, None) == [(0, 250)]
    assert window_spans(250, 300) == [(0, 250)]
    assert window_spans(250, 100) == [(0, 100), (100, 200), (200, 250)]
    assert window_spans(240, 100) == [(0, 100), (100, 240)]  # a remainder under half a window joins
    embedder = load_embedder(mini["ckpt"])
    feats = np.random.default_rng(0).normal(size=(230, 40)).astype(np.float32) + 3
    got = embedder.embed_features(feats, window=embedder.window_frames(1.0))
    model = embedder.model
    with torch.inference_mode():
        parts = [
            model(torch.from_numpy(mean_normalise(feats[a:b]))[None])[0].numpy()
            for a, b in [(0, 100), (100, 230)]
        ]
    np.testing.assert_allclose(got, np.mean(parts, axis=0), atol=1e-6)
    whole = embedder.embed_features(feats)
    assert np.abs(whole - got).max() > 1e-3


def test_embed_refuses_keys_that_kaldi_cannot_hold(mini, capsys) -> None:
    path = next(iter(mini["wavs"].values()))
    code, _, err = run_main(["embed", path, path, "--checkpoint", str(mini["ckpt"])], capsys)
    assert code == 1
    assert_one_line(err, "memsv embed: error:", "given twice")


# ---------------------------------------------------------------------------------------------------
# memsv similarity


def _write_thresholds(mini, capsys) -> tuple[Path, dict[tuple[str, str], float]]:
    """Score mini_test's trials with `memsv score` (training-mean subtraction, as the recipe), write
    thresholds.json as `memsv score --out-dir` does; returns it and the trial scores."""
    trials = mini["root"] / "fbank" / "mini_test" / "trials" / "mini.kaldi"
    scores_dir = mini["exp"] / "scores"
    code, _, err = run_main(
        ["score", "--trials", str(trials), "--embeddings", str(mini["test_emb"])]
        + ["--mean-from", str(mini["train_emb"]), "--out-dir", str(scores_dir)],
        capsys,
    )
    assert code == 0, err
    rows = [line.split() for line in (scores_dir / "mini.kaldi.score").read_text().splitlines()]
    scores = {(r[0], r[1]): float(r[2]) for r in rows}
    labels = [r[3] == "target" for r in rows]
    rates = compute_error_rates([float(r[2]) for r in rows], labels)
    eer, eer_thr = eer_from_rates(rates)
    dcf01, dcf01_thr = min_dcf_from_rates(rates, 0.01)
    dcf05, dcf05_thr = min_dcf_from_rates(rates, 0.05)
    entry = {
        "name": "mini.kaldi",
        "trials": str(trials),
        "embeddings": str(mini["test_emb"]),
        "mean_from": str(mini["train_emb"]),
        "norm": None,
        "eer_percent": 100 * eer,
        "eer_threshold": eer_thr,
        "min_dcf_01": dcf01,
        "min_dcf_01_threshold": dcf01_thr if np.isfinite(dcf01_thr) else None,
        "min_dcf_05": dcf05,
        "min_dcf_05_threshold": dcf05_thr if np.isfinite(dcf05_thr) else None,
    }
    normed = {**entry, "name": "mini.kaldi.asnorm", "norm": "asnorm", "eer_threshold": 9.0}
    path = scores_dir / "thresholds.json"
    path.write_text(json.dumps({"version": 1, "lists": [normed, entry]}))
    return path, scores


def _similarity(mini, a: str, b: str, capsys, *extra: str) -> dict:
    wavs = mini["wavs"]
    code, stdout, err = run_main(
        ["similarity", wavs[a], wavs[b], "--checkpoint", str(mini["ckpt"]), "--json", *extra], capsys
    )
    assert code == 0, err
    return json.loads(stdout)


def test_similarity_decides_with_the_threshold_memsv_score_stored(mini, capsys) -> None:
    path, scores = _write_thresholds(mini, capsys)
    entry = raw_cosine_lists(path)[0]  # the AS-norm list is skipped: a raw cosine cannot use it
    assert entry.name == "mini.kaldi" and entry.mean_from == str(mini["train_emb"])
    threshold = entry.eer_threshold
    trials = read_trials(mini["root"] / "fbank" / "mini_test" / "trials" / "mini.kaldi")
    # The untrained model is no verifier: take a same-speaker trial that its EER threshold accepts and a
    # different-speaker one it rejects (both exist for any EER below 100%).
    target = max((t for t in trials if t.label is True), key=lambda t: scores[(t.enroll, t.test)])
    nontarget = min((t for t in trials if t.label is False), key=lambda t: scores[(t.enroll, t.test)])
    same = _similarity(mini, target.enroll, target.test, capsys)
    different = _similarity(mini, nontarget.enroll, nontarget.test, capsys)
    assert same["decision"] == "same" and different["decision"] == "different"
    for result, trial in ((same, target), (different, nontarget)):
        assert result["score"] == pytest.approx(scores[(trial.enroll, trial.test)], abs=2e-6)  # = memsv score
        assert result["threshold"] == threshold and result["threshold_kind"] == "eer"
        assert result["list"] == "mini.kaldi" and result["mean_from"] == str(mini["train_emb"])
    wavs = mini["wavs"]
    code, stdout, err = run_main(
        ["similarity", wavs[target.enroll], wavs[target.test], "--checkpoint", str(mini["ckpt"])], capsys
    )
    assert code == 0, err
    assert f"decision  same speaker (score >= {threshold:.6f})" in stdout
    assert f"threshold eer of list 'mini.kaldi' in {path}" in stdout and str(mini["train_emb"]) in stdout
    # A stored minDCF threshold, or a number, instead of the EER one.
    mid = (scores[(target.enroll, target.test)] + scores[(nontarget.enroll, nontarget.test)]) / 2
    assert (
        _similarity(mini, target.enroll, target.test, capsys, "--threshold", f"{mid}")["decision"] == "same"
    )
    dcf = entry.min_dcf_05_threshold
    if dcf is not None:
        r = _similarity(mini, nontarget.enroll, nontarget.test, capsys, "--threshold", "mindcf05")
        assert r["threshold"] == dcf and r["decision"] == ("same" if r["score"] >= dcf else "different")
    code, _, err = run_main(
        [
            "similarity",
            mini["wavs"][target.enroll],
            mini["wavs"][target.test],
            "--checkpoint",
            str(mini["ckpt"]),
        ]
        + ["--list", "vox1_O"],
        capsys,
    )
    assert code == 1
    assert_one_line(err, "memsv similarity: error:", "no un-normalised list named 'vox1_O'", "mini.kaldi")
    path.unlink()


def test_similarity_scores_in_the_lda_space_its_list_was_scored_in(mini, tmp_path: Path, capsys) -> None:
    """A list scored with ``--transform`` (the recipe's LDA back-end) stores it in thresholds.json; the
    score of a pair must then be that list's score, so the threshold applies to it."""
    lda, out = tmp_path / "lda.mat", tmp_path / "scores"
    utt2spk = mini["root"] / "fbank" / "mini_train" / "utt2spk"
    code, _, err = run_main(["compute-lda", str(mini["train_emb"]), str(utt2spk), str(lda)], capsys)
    assert code == 0, err
    trials = mini["root"] / "fbank" / "mini_test" / "trials" / "mini.kaldi"
    code, _, err = run_main(
        ["score", "-t", str(trials), "-e", str(mini["test_emb"]), "--mean-from", str(mini["train_emb"])]
        + ["--transform", str(lda), "--out-dir", str(out)],
        capsys,
    )
    assert code == 0, err
    enroll, test, score, _ = (out / "mini.kaldi.score").read_text().splitlines()[0].split()
    r = _similarity(mini, enroll, test, capsys, "--thresholds", str(out / "thresholds.json"))
    assert r["transform"] == str(lda.absolute()) and r["mean_from"] == str(mini["train_emb"])
    assert r["score"] == pytest.approx(float(score), abs=2e-6)
    assert r["decision"] == ("same" if r["score"] >= r["threshold"] else "different")
    wavs = mini["wavs"]
    argv = ["similarity", wavs[enroll], wavs[test], "--checkpoint", str(mini["ckpt"])]
    code, stdout, err = run_main([*argv, "--thresholds", str(out / "thresholds.json")], capsys)
    assert code == 0, err
    assert f"transform {lda.absolute()}" in stdout


def test_similarity_without_thresholds_prints_the_score_and_how_to_get_one(
    mini, tmp_path: Path, capsys
) -> None:
    a, b = list(mini["wavs"])[:2]
    wavs = mini["wavs"]
    code, stdout, err = run_main(["similarity", wavs[a], wavs[b], "--checkpoint", str(mini["ckpt"])], capsys)
    assert code == 0, err
    assert stdout.startswith("score ") and "decision  none" in stdout
    assert "no decision threshold stored" in stdout and "memsv score" in stdout and "--out-dir" in stdout
    assert "mean      none subtracted" in stdout
    # Only score-normalised lists: a raw cosine is not comparable with them.
    normed = tmp_path / "t.json"
    normed.write_text(json.dumps({"version": 1, "lists": [_entry("x", norm="asnorm", eer_threshold=2.0)]}))
    r = _similarity(mini, a, b, capsys, "--thresholds", str(normed))
    assert r["decision"] is None and "only score-normalised lists" in r["note"]
    code, _, err = run_main(
        [
            "similarity",
            wavs[a],
            wavs[b],
            "--checkpoint",
            str(mini["ckpt"]),
            "--thresholds",
            str(tmp_path / "no.json"),
        ],
        capsys,
    )
    assert code == 1
    assert_one_line(err, "memsv similarity: error:", "no.json: no such thresholds file")


def _entry(name: str, **fields: object) -> dict:
    """A complete thresholds.json entry (the file format of memsv_cli.scoring.thresholds)."""
    return {
        "name": name,
        "trials": f"/t/{name}",
        "embeddings": "/e.scp",
        "mean_from": None,
        "norm": None,
        "eer_percent": 10.0,
        "eer_threshold": 0.4,
        "min_dcf_01": 1.0,
        "min_dcf_01_threshold": None,
        "min_dcf_05": 0.5,
        "min_dcf_05_threshold": 0.6,
    } | fields


def test_similarity_threshold_choice_reads_the_scoring_module_file(tmp_path: Path) -> None:
    """No model needed: --threshold / --list resolved against a thresholds.json (norm null only)."""
    path = tmp_path / "thresholds.json"
    lists = [_entry("n", norm="snorm", eer_threshold=5.0), _entry("a"), _entry("b", eer_threshold=0.3)]
    path.write_text(json.dumps({"version": 1, "lists": lists}))
    ckpt = tmp_path / "m.pt"
    c = choose_threshold(ckpt, path, None, None)  # the first un-normalised list, its EER threshold
    assert (c.threshold, c.kind, c.list_name, c.note) == (0.4, "eer", "a", None)
    assert choose_threshold(ckpt, path, "mindcf05", "b").threshold == 0.6
    assert choose_threshold(ckpt, path, "0.25", "b").threshold == 0.25
    with pytest.raises(MemsvError, match="list 'a' stores no finite mindcf01 threshold"):
        choose_threshold(ckpt, path, "mindcf01", None)  # null: rejecting every trial was cheapest
    with pytest.raises(MemsvError, match="no un-normalised list named 'n'"):
        choose_threshold(ckpt, path, None, "n")
    path.write_text(json.dumps({"version": 1, "lists": [_entry("a", eer_threshold="x")]}))
    with pytest.raises(MemsvError, match="eer_threshold must be a finite number"):
        choose_threshold(ckpt, path, None, None)  # the scoring module's validation, one line


# ---------------------------------------------------------------------------------------------------
# VAD


@pytest.mark.skipif(not vad_available(), reason="silero-vad not installed")
def test_vad_keeps_the_speech_between_silences(mini, tmp_path: Path) -> None:
    from memsv_cli.vad import SileroVad

    path = next(iter(mini["wavs"].values()))
    speech, rate = sf.read(path, dtype="float32")
    quiet = (np.random.default_rng(0).normal(size=rate) * 1e-4).astype(np.float32)
    padded = tmp_path / "padded.wav"
    sf.write(padded, np.concatenate([quiet, speech, quiet]), rate, subtype="FLOAT")
    threads = torch.get_num_threads()
    vad = SileroVad()
    assert torch.get_num_threads() == threads  # importing silero_vad would set 1 for the whole process
    embedder = load_embedder(mini["ckpt"])
    kept = embedder.read(padded, vad)
    assert 0.25 * len(speech) <= len(kept) <= len(speech) + 0.1 * rate  # the silences are gone
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.concatenate([quiet, quiet]), rate, subtype="FLOAT")
    with pytest.raises(MemsvError, match="silent.wav: --vad found no speech"):
        embedder.embed_file(silent, vad=vad)


def test_vad_without_its_package_is_one_line(mini, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "silero_vad" else real(n, *a))
    path = next(iter(mini["wavs"].values()))
    code, _, err = run_main(["embed", path, "--checkpoint", str(mini["ckpt"]), "--vad"], capsys)
    assert code == 1
    assert_one_line(err, "memsv embed: error:", "--vad needs the silero-vad package", "pip install")


# ---------------------------------------------------------------------------------------------------
# One-line errors through the real entry point


@pytest.mark.parametrize("command", ["embed", "similarity"])
def test_missing_checkpoint_is_one_line_and_exit_1(tmp_path: Path, command: str) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    files = [wav] if command == "embed" else [wav, wav]
    code, stdout, err = run_memsv([command, *files, "--checkpoint", tmp_path / "nope.pt"])
    assert code == 1 and stdout == ""
    assert_one_line(err, f"memsv {command}: error:", "nope.pt", "no such checkpoint")


def test_training_records_the_features_and_inference_uses_the_record(mini, tmp_path: Path) -> None:
    """memsv train writes the fbank options into the experiment (config ``features``); embedding from
    audio uses them even after the training features moved."""
    import shutil

    from memsv_cli.train.config import resolve_config
    from memsv_cli.train.trainer import train

    fbank_dir = tmp_path / "fbank"
    shutil.copytree(mini["root"] / "fbank" / "mini_train", fbank_dir)
    sets = [
        f"data.dir={fbank_dir}",
        "model.name=resnet18",
        "model.args.feat_dim=40",
        "model.args.base_width=4",
    ]
    sets += ["model.args.embed_dim=24", "data.chunk_frames=40", "train.batch_size=2", "train.epochs=1"]
    sets += ["train.num_workers=0", "train.progress=false", "train.num_avg=1", "train.memory_check=false"]
    train(resolve_config(None, sets), tmp_path / "exp")
    saved = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert saved["features"]["num_mel_bins"] == 40 and "dither" not in saved["features"]
    shutil.rmtree(fbank_dir)  # moved away: the record still says what the model was trained on
    embedder = load_embedder(tmp_path / "exp" / "models" / "avg_model.pt")
    assert embedder.fbank == FBANK
