"""Training records, written by rank 0 only: ``train.log`` (timestamped lines), ``metrics.jsonl`` (one
JSON record per line: ``type`` ``step`` or ``epoch``) and, with ``train.tensorboard: true``, TensorBoard
scalars in ``EXP/tensorboard/`` (optional dependency: ``pip install tensorboard``).

TensorBoard tags: ``train/loss``, ``train/acc``, ``train/lr``, ``train/margin``,
``train/samples_per_s`` at every step record (x = optimizer step), and per epoch ``epoch/loss``,
``epoch/acc``, ``epoch/samples_per_s``, ``memory/peak_bytes`` and ``memory/predicted_bytes`` (when known).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from memsv_cli.atomic import write_lines_atomic
from memsv_cli.errors import MemsvError

_STEP_TAGS = ("loss", "acc", "lr", "margin", "samples_per_s")
_EPOCH_TAGS = {
    "loss": "epoch/loss",
    "acc": "epoch/acc",
    "samples_per_s": "epoch/samples_per_s",
    "peak_mem_bytes": "memory/peak_bytes",
    "predicted_peak_bytes": "memory/predicted_bytes",
    "measured_peak_bytes": "memory/measured_bytes",
    "reserved_peak_bytes": "memory/reserved_bytes",
}


class TrainLog:
    """``train.log``, ``metrics.jsonl`` and optional TensorBoard scalars (no-ops when not ``enabled``)."""

    def __init__(self, exp_dir: Path, enabled: bool, tensorboard: bool = False, start_step: int = 0) -> None:
        self.log_path, self.metrics_path = exp_dir / "train.log", exp_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb: Any = None
        if enabled and tensorboard:
            self._tb = _summary_writer(exp_dir / "tensorboard", start_step)

    def info(self, message: str) -> None:
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message}\n")

    def record(self, rec: dict[str, Any]) -> None:
        """Append one metrics record (``type`` step or epoch) and its TensorBoard scalars."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        if self._tb is not None:
            tags = {k: f"train/{k}" for k in _STEP_TAGS} if rec["type"] == "step" else _EPOCH_TAGS
            for key, tag in tags.items():
                if rec.get(key) is not None:
                    self._tb.add_scalar(tag, rec[key], rec["step"])

    def truncate_after(self, step: int) -> None:
        """Drop metric records written after global step ``step`` (a resumed run redoes those steps)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by the interruption
                continue
        write_lines_atomic(self.metrics_path, keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _summary_writer(log_dir: Path, start_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MemsvError(
            "train.tensorboard: true needs the tensorboard package (pip install tensorboard), "
            "or set train.tensorboard=false"
        ) from None
    # purge_step drops events a resumed run is about to write again (after the checkpoint's step)
    return SummaryWriter(str(log_dir), purge_step=start_step or None)
