"""`memsv export`: TorchScript and ONNX files whose embeddings equal memsv's (vanilla, rev, fullrev)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_errors import assert_one_line, run_main, run_memsv

from memsv_cli.embed import mean_normalise
from memsv_cli.errors import MemsvError
from memsv_cli.export import TOLERANCE, export_model
from memsv_cli.models import get_model
from memsv_cli.train.checkpoint import load_model_from_checkpoint, save_checkpoint

FEAT_DIM = 80
NAMES = ("resnet18", "rev_resnet18", "fullrev_resnet18")
HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
# Lengths of the equality check: not multiples of the time stride (8), one of them short.
LENGTHS = (9, 203, 316)


def _checkpoint(root: Path, name: str) -> Path:
    torch.manual_seed(0)
    args = {"feat_dim": FEAT_DIM, "embed_dim": 24, "base_width": 4}
    model = get_model(name, **args)
    for module in model.modules():  # non-trivial BatchNorm statistics: eval-mode BN must be exported
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    ckpt = root / name / "models" / "avg_model.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": {"model": {"name": name, "args": args}}})
    return ckpt


def _inputs() -> list[np.ndarray]:
    """Two utterances per length, mean-normalised as memsv's features are: ``(2, frames, F)`` each."""
    rng = np.random.default_rng(1)
    return [
        np.stack([mean_normalise(rng.normal(size=(n, FEAT_DIM)) * 2 + 4) for _ in range(2)]) for n in LENGTHS
    ]


def _memsv(ckpt: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_model_from_checkpoint(ckpt)  # as extract-embeddings runs it
    with torch.inference_mode():
        return model(torch.from_numpy(x.astype(np.float32))).numpy()


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_export_equals_memsv_embeddings(tmp_path: Path, name: str) -> None:
    ckpt = _checkpoint(tmp_path, name)
    out = tmp_path / f"{name}.pt"
    summary = export_model(ckpt, "torchscript", out)
    assert summary.max_abs_diff is not None and summary.max_abs_diff <= TOLERANCE
    loaded = torch.jit.load(str(out))
    worst = 0.0
    with torch.inference_mode():
        for x in _inputs():
            got = loaded(torch.from_numpy(x.astype(np.float32))).numpy()
            worst = max(worst, float(np.abs(got - _memsv(ckpt, x)).max()))
    assert worst <= 1e-4, worst
    # The plain feed-forward function: no custom autograd Function (a PythonOp) in the graph.
    assert "PythonOp" not in str(loaded.inlined_graph)
    files = {"memsv.json": ""}
    torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files["memsv.json"])
    assert meta["feat_dim"] == FEAT_DIM and meta["embed_dim"] == 24 and meta["min_frames"] == 9
    assert meta["model"]["name"] == name
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [out.name]  # no temporaries


@pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxscript and onnxruntime not installed")
@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_equals_memsv_embeddings_in_onnxruntime(tmp_path: Path, name: str) -> None:
    import onnx
    import onnxruntime as ort

    ckpt = _checkpoint(tmp_path, name)
    out = tmp_path / f"{name}.onnx"
    summary = export_model(ckpt, "onnx", out)
    assert summary.max_abs_diff is not None and summary.max_abs_diff <= TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in _inputs():
        got = session.run(None, {"feats": x.astype(np.float32)})[0]
        worst = max(worst, float(np.abs(got - _memsv(ckpt, x)).max()))
    assert worst <= 1e-4, worst
    proto = onnx.load(str(out))
    assert {op.domain for op in proto.opset_import} <= {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "pkg.onnxscript.torch_lib",
    }
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["memsv"])
    assert meta["model"]["name"] == name


def test_onnx_without_its_packages_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = _checkpoint(tmp_path, "resnet18")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    code, _, err = run_main(
        ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", "m.onnx"], capsys
    )
    assert code == 1
    assert_one_line(err, "memsv export: error:", "onnxscript", "pip install 'memsv[export]'")
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MemsvError, match="unknown --format 'tflite'"):
        export_model(_checkpoint(tmp_path, "resnet18"), "tflite", tmp_path / "m")


def test_cli_export_with_a_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    code, _, err = run_memsv(
        [
            "export",
            "--checkpoint",
            tmp_path / "nope.pt",
            "--format",
            "torchscript",
            "--out",
            tmp_path / "m.pt",
        ]
    )
    assert code == 1, err
    assert_one_line(err, "memsv export: error:", "nope.pt", "no such checkpoint")
    assert not (tmp_path / "m.pt").exists()


def test_cli_export_prints_the_check(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path, "rev_resnet18")
    out = tmp_path / "m.pt"
    code, stdout, err = run_main(
        ["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "max |diff| vs memsv" in stdout and out.is_file()
