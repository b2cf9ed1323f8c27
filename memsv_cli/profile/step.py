"""One speaker-embedding training step for memory measurement: exactly the step ``memsv train`` runs.

The step is :class:`memsv_cli.train.step.TrainStep` itself (zero_grad, autocast forward of model + AAM
head on a fbank batch ``(B, T, F)``, cross-entropy, backward, clipping if asked, optimizer step), on a
random batch; the profiler keeps no copy of it. The head's weight ``(C, E)``, its gradient and
optimizer state, and the ``(B, C)`` logits are part of the step's memory, as they are in real training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from memsv_cli.errors import MemsvError
from memsv_cli.optim import OPTIMIZER_NAMES, full_precision_name
from memsv_cli.train.config import PRECISIONS as TRAIN_PRECISIONS
from memsv_cli.train.heads import AAMSoftmax
from memsv_cli.train.step import TrainingNet, TrainStep

OPTIMIZERS = OPTIMIZER_NAMES
# The training precisions (one list, train.config): fp16 runs CPU autocast in float16 with torch's CPU
# GradScaler (on meta, without the data-dependent inf check: profile.memory._step_without_inf_check).
PRECISIONS = TRAIN_PRECISIONS

# The recipe's hyper-parameters (PAPER.md); only the presence of momentum / moments matters for memory.
OPTIMIZER_KWARGS: dict[str, dict[str, object]] = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    "adam": {"lr": 1e-3, "weight_decay": 1e-4},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
}


def full_precision_optimizer(name: str) -> str:
    """The 32-bit optimizer an 8-bit one replaces (``adam8bit`` -> ``adam``)."""
    return full_precision_name(name)


def build_optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``params``."""
    if name not in OPTIMIZERS:
        raise MemsvError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    from memsv_cli.optim import build_optimizer as build

    return build(name, params, **OPTIMIZER_KWARGS[full_precision_optimizer(name)])


@dataclass
class StepSetup:
    """Shapes and choices of one training step.

    batch_size: utterances per step (B); frames: chunk length in 10 ms frames (T); feat_dim: fbank bins (F);
    num_speakers: classifier classes (C); embed_dim: embedding size (E); optimizer: one of
    :data:`OPTIMIZERS`; precision: ``fp32``, ``bf16`` or ``fp16`` (autocast, fp32 master weights; fp16
    with the loss scaler); accum_steps: micro-batches of ``batch_size`` per optimizer step (A).
    """

    batch_size: int = 128
    frames: int = 200
    feat_dim: int = 80
    num_speakers: int = 5994
    embed_dim: int = 256
    optimizer: str = "sgd"
    precision: str = "fp32"
    accum_steps: int = 1

    def __post_init__(self) -> None:
        for key in ("batch_size", "frames", "feat_dim", "num_speakers", "embed_dim", "accum_steps"):
            if getattr(self, key) < 1:
                raise MemsvError(f"{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.optimizer not in OPTIMIZERS:
            raise MemsvError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise MemsvError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")


@dataclass
class TrainingStep:
    """A model, its head and optimizer wrapped in the training step, ready to :meth:`run` on random
    batches."""

    net: TrainingNet
    optimizer: torch.optim.Optimizer
    step: TrainStep
    setup: StepSetup
    device_type: str  # "cpu" or "cuda": where batches are made and which autocast applies

    @property
    def model(self) -> nn.Module:
        return self.net.model

    @property
    def head(self) -> AAMSoftmax:
        return self.net.head

    @classmethod
    def build(
        cls,
        build_model: Callable[[], nn.Module],
        setup: StepSetup,
        device: torch.device | str = "cpu",
        optimizer_factory: Callable[[str, list[nn.Parameter]], torch.optim.Optimizer] = build_optimizer,
    ) -> TrainingStep:
        """Build model (``build_model()``), head, optimizer and step on ``device``, in training mode."""
        device = torch.device(device)
        net = TrainingNet(build_model(), AAMSoftmax(setup.embed_dim, setup.num_speakers)).train()
        if device.type != "cpu":  # fake (meta) tensors present as CPU tensors and cannot be moved
            net = net.to(device)
        optimizer = optimizer_factory(setup.optimizer, list(net.parameters()))
        step = TrainStep(net, optimizer, setup.precision, device.type)
        return cls(net, optimizer, step, setup, device.type)

    def parameters(self) -> Iterator[nn.Parameter]:
        yield from self.net.parameters()

    def buffers(self) -> Iterator[torch.Tensor]:
        yield from self.net.buffers()

    def warm_up_optimizer(self) -> None:
        """Create the optimizer states as a first step would, without running the model: every parameter
        gets a zero gradient and the optimizer steps once (the states' sizes do not depend on values)."""
        for p in self.parameters():
            p.grad = torch.zeros_like(p)
        self.optimizer.step()

    def run(self) -> torch.Tensor:
        """One full training step on random batches; returns its statistics (``train.step.STAT_*``).

        With accumulation (A > 1) all A micro-batch inputs exist, as the trainer moves a step's
        micro-batches to the device together, but only 2 run: from the second on, every micro-batch
        starts from the same memory (the accumulated gradients, the optimizer states, the inputs; the
        previous graph is freed by its backward), so micro-batches 3..A repeat the second's peak exactly
        and would only cost time. The loss scale (1/2 instead of 1/A) changes no size."""
        s = self.setup
        inputs = []
        for _ in range(s.accum_steps):
            feats = torch.randn(s.batch_size, s.frames, s.feat_dim, device=self.device_type)
            labels = torch.randint(0, s.num_speakers, (s.batch_size,), device=self.device_type)
            inputs.append((feats, labels))
        return self.step(inputs[:2])
