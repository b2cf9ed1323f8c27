"""Additive angular margin softmax (AAM-softmax, ArcFace; Deng et al. 2019), as WeSpeaker trains with.

Logits are ``s * cos(theta_y + m)`` for the true class and ``s * cos(theta_j)`` for the others, where
``theta`` is the angle between the L2-normalised embedding and class weight. Past ``theta > pi - m``
``cos(theta + m)`` would stop decreasing, so there (as in WeSpeaker/insightface) the target logit falls
back to ``cos(theta) - m * sin(m)``, which keeps the function monotonic. The margin changes during
training (see :class:`~memsv_cli.train.schedulers.MarginScheduler`) through :meth:`AAMSoftmax.set_margin`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AAMSoftmax(nn.Module):
    """AAM-softmax classifier head.

    Args:
        embed_dim: embedding size E.
        num_classes: number of training speakers C.
        scale: logit scale ``s`` (32 in the recipe).
        margin: initial angular margin ``m`` in radians.
        easy_margin: apply the margin only where ``cos(theta) > 0`` (ArcFace's variant).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        scale: float = 32.0,
        margin: float = 0.2,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.scale = float(scale)
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Change the margin (radians); the cached trigonometric constants follow."""
        self.margin = float(margin)
        self._cos_m, self._sin_m = math.cos(self.margin), math.sin(self.margin)
        self._th = math.cos(math.pi - self.margin)
        self._mm = math.sin(math.pi - self.margin) * self.margin

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, return_cosine: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Margin-adjusted, scaled logits.

        Args:
            embeddings: (B, E), any scale (normalised here).
            labels: (B,) int64 class indices in [0, C).
            return_cosine: also return the plain cosines (B, C), e.g. for margin-free accuracy.
        Returns:
            (B, C) logits for cross-entropy, fp32 even under autocast (autocast is switched off here:
            the angle arithmetic near cos = +-1 needs fp32); with ``return_cosine`` (logits, cosine).
        """
        with torch.autocast(embeddings.device.type, enabled=False):
            logits, cosine = self._logits(embeddings.float(), labels)
        return (logits, cosine) if return_cosine else logits

    def _logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight.float()))
        # clamp keeps sqrt's gradient finite at |cos| = 1
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-7, max=1.0))
        phi = cosine * self._cos_m - sine * self._sin_m  # cos(theta + m)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > self._th, phi, cosine - self._mm)
        one_hot = F.one_hot(labels, self.num_classes).to(cosine.dtype)
        return self.scale * (one_hot * phi + (1.0 - one_hot) * cosine), cosine.detach()

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}, easy_margin={self.easy_margin}"
        )
