"""Training-curve plot (PNG) from ``metrics.jsonl``: loss, accuracy and LR per epoch."""

from __future__ import annotations

import json
from pathlib import Path

from memsv_cli.atomic import atomic_path


def read_epoch_records(metrics_path: str | Path) -> list[dict]:
    """The ``"type": "epoch"`` records of a metrics.jsonl, in file order (cut lines skipped)."""
    out = []
    path = Path(metrics_path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == "epoch":
            out.append(rec)
    return out


def plot_training_curve(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Draw loss and accuracy (left) and LR and margin (right) against epoch; None without epoch records.

    Uses matplotlib's object API with the Agg canvas: no display and no global pyplot state.
    """
    records = read_epoch_records(metrics_path)
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["loss"] for r in records], "o-", color="tab:blue", label="loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (AAM-softmax CE)", color="tab:blue")
    ax_acc = ax_loss.twinx()
    ax_acc.plot(epochs, [100 * r["acc"] for r in records], "s-", color="tab:green", label="accuracy")
    ax_acc.set_ylabel("training accuracy (%)", color="tab:green")
    ax_loss.set_title("loss and accuracy")
    ax_lr.plot(epochs, [r["lr"] for r in records], "o-", color="tab:red")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (end of epoch)", color="tab:red")
    ax_m = ax_lr.twinx()
    ax_m.plot(epochs, [r["margin"] for r in records], "s-", color="tab:purple")
    ax_m.set_ylabel("AAM margin", color="tab:purple")
    ax_lr.set_title("schedules")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
