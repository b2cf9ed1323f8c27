"""DET curves (miss vs false-alarm probability on normal-deviate axes, Martin et al. 1997).

Uses matplotlib's object API with the Agg canvas, so plotting never touches pyplot's global state or
needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.special import ndtri

from memsv_cli.atomic import atomic_path
from memsv_cli.scoring.metrics import ErrorRates, Metrics

# Axis ticks in percent, as in NIST DET plots.
_TICKS = np.array([0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 40, 60])


def write_det_plot(
    path: str | Path, curves: Mapping[str, tuple[ErrorRates, Metrics | None]], title: str = "DET curve"
) -> None:
    """Write a PNG with one DET curve per entry, the EER point marked, atomically.

    Args:
        path: output ``.png``.
        curves: label -> (operating points, metrics or None); the EER is marked when metrics are given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Rates of 0 or 1 lie at -inf / +inf on probit axes: clip just outside the outer ticks.
    lo, hi = _TICKS[0] / 100 / 2, 0.7
    fig = Figure(figsize=(5.5, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (rates, metrics) in curves.items():
        x = ndtri(np.clip(rates.p_fa, lo, hi))
        y = ndtri(np.clip(rates.p_miss, lo, hi))
        text = label if metrics is None else f"{label} (EER {metrics.eer_percent:.3f}%)"
        (line,) = ax.plot(x, y, linewidth=1.5, label=text)
        if metrics is not None:
            e = ndtri(np.clip(metrics.eer_percent / 100, lo, hi))
            ax.plot([e], [e], "o", color=line.get_color(), markersize=5)
    ticks = ndtri(_TICKS / 100)
    labels = [f"{t:g}" for t in _TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(ndtri(lo), ndtri(hi))
    ax.set_ylim(ndtri(lo), ndtri(hi))
    ax.plot([ndtri(lo), ndtri(hi)], [ndtri(lo), ndtri(hi)], ":", color="grey", linewidth=0.8)
    ax.set_xlabel("False-alarm probability (%)")
    ax.set_ylabel("Miss probability (%)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.4, alpha=0.6)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
