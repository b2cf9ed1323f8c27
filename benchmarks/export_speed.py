"""Embedding speed of exported models: PyTorch (memsv) vs TorchScript vs ONNX Runtime, same inputs, one run.

For each model a random-weight checkpoint (speed does not depend on the weights) is exported with
``memsv_cli.export.export_model`` to TorchScript and ONNX; then the same utterances (random fbank of
lengths drawn uniformly between ``--min-seconds`` and ``--max-seconds``, mean-normalised, fixed seed)
are embedded one by one (batch 1, the CPU default of extract-embeddings) by

- ``torch``: the model as ``extract-embeddings`` runs it (eval, plain forward, ``torch.inference_mode``);
- ``torchscript``: ``torch.jit.load`` of the export, under ``torch.inference_mode``;
- ``onnxruntime``: the ONNX export in an ``InferenceSession`` (CPU execution provider, all graph
  optimisations), intra-op threads = ``--threads``.

Each backend first embeds ``--warmup`` utterances (not timed; TorchScript's profiling executor
optimises during its first calls), then the best of ``--repeats`` passes over all utterances is kept.
Printed: utterances/s, ratio to torch, and the largest |embedding - torch's| seen.

Usage::

    .venv/bin/python benchmarks/export_speed.py [--models resnet34,rev_resnet34,fullrev_resnet34]
        [--utts 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memsv_cli.embed import mean_normalise  # noqa: E402
from memsv_cli.export import export_model  # noqa: E402
from memsv_cli.inference import plain_model  # noqa: E402
from memsv_cli.models import get_model  # noqa: E402
from memsv_cli.train.checkpoint import save_checkpoint  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]


def make_inputs(n: int, min_s: float, max_s: float, feat_dim: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` mean-normalised ``(1, frames, feat_dim)`` float32 arrays, 100 frames per second."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(int(min_s * 100), int(max_s * 100) + 1, size=n)
    return [mean_normalise(rng.normal(size=(t, feat_dim)) * 3 + 5)[None] for t in frames]


def runners(model: torch.nn.Module, ts_path: Path, onnx_path: Path, threads: int) -> dict[str, Runner]:
    import onnxruntime as ort

    scripted = torch.jit.load(str(ts_path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def run_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def run_ts(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(x)).numpy()

    def run_ort(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"feats": x})[0]

    return {"torch": run_torch, "torchscript": run_ts, "onnxruntime": run_ort}


def time_runner(run: Runner, inputs: list[np.ndarray], warmup: int, repeats: int) -> tuple[float, list]:
    """Best-of-``repeats`` seconds for all inputs, and the outputs of the last pass."""
    for x in inputs[:warmup]:
        run(x)
    best, outputs = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [run(x) for x in inputs]
        best = min(best, time.perf_counter() - start)
    return best, outputs


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    torch.manual_seed(0)
    model_args = {"feat_dim": 80, "embed_dim": 256}
    model = get_model(name, **model_args)
    ckpt = work / name / "avg_model.pt"
    save_checkpoint(
        ckpt, {"model": model.state_dict(), "config": {"model": {"name": name, "args": model_args}}}
    )
    exports = {}
    for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
        summary = export_model(ckpt, fmt, work / name / f"model.{suffix}")
        exports[fmt] = summary
    inputs = make_inputs(args.utts, args.min_seconds, args.max_seconds, 80)
    runs = runners(plain_model(model), exports["torchscript"].path, exports["onnx"].path, args.threads)
    results, reference = {}, None
    for backend, run in runs.items():
        seconds, outputs = time_runner(run, inputs, args.warmup, args.repeats)
        if reference is None:
            reference = outputs
        diff = max(float(np.abs(o - r).max()) for o, r in zip(outputs, reference, strict=True))
        results[backend] = {"seconds": seconds, "utts_per_s": len(inputs) / seconds, "max_abs_diff": diff}
    for r in results.values():
        r["ratio"] = r["utts_per_s"] / results["torch"]["utts_per_s"]
    audio_s = sum(x.shape[1] for x in inputs) / 100
    return {"model": name, "utts": len(inputs), "audio_seconds": audio_s, "backends": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet34,rev_resnet34,fullrev_resnet34")
    parser.add_argument("--utts", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(name, args, Path(tmp)) for name in args.models.split(",")]
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=1))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, best of {args.repeats}")
    print(f"{'model':<18} {'backend':<12} {'utts/s':>8} {'x torch':>8} {'max |diff|':>11}")
    for row in rows:
        for backend, r in row["backends"].items():
            print(
                f"{row['model']:<18} {backend:<12} {r['utts_per_s']:8.2f} {r['ratio']:8.2f} "
                f"{r['max_abs_diff']:11.2e}"
            )
        print(f"{'':<18} ({row['utts']} utterances, {row['audio_seconds']:.0f} s of audio)")


if __name__ == "__main__":
    main()
