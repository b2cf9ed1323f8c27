"""Memory plans (issue 14): the exact ways to train a recipe on one card, their predicted peaks and step-time
costs, and the cheapest that fits (``memsv train --gpu-memory``, ``memsv profile-memory --gpu-memory``).

A plan keeps the recipe's samples per optimizer step and process (``batch_size x accum_steps``) and changes
only how the step is computed:

- ``recompute_chunks`` K (rev_/fullrev_ models): exact, backward recomputes the largest maps in K parts;
- ``checkpoint_blocks`` (vanilla models): activation checkpointing around each residual unit, exact;
- micro-batch x accumulation: the same gradient, but BatchNorm normalises over the micro-batch, so a plan
  whose micro-batch differs from the recipe's ``batch_size`` is listed and chosen only when allowed;
- precision: the recipe's, or (when allowed and the recipe is fp32) the card's half precision.

Peaks are the profiler's meta estimate of exactly that step (:func:`predict_peak`; CUDA's allocated bytes).
What must fit is :func:`required_bytes`: the peak plus :data:`ALLOCATOR_MARGIN` for the caching allocator
(reserved blocks exceed allocated bytes by fragmentation and rounding) plus a fixed reserve for the CUDA
context outside PyTorch's allocator. Costs are step times relative to the recipe's own plan, from the
ratios measured in docs/results.md (:func:`step_cost`); half precision gets no speed credit (it is not
measured here), so it is chosen only where it avoids recomputation or accumulation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from memsv_cli.profile.memory import measure_step
from memsv_cli.profile.step import StepSetup
from memsv_cli.sizes import format_bytes
from memsv_cli.train.precision import native_bf16

#: reserved / allocated headroom assumed for the caching allocator (checked by benchmarks/gpu_check.sh)
ALLOCATOR_MARGIN = 0.10
#: CUDA context, cuBLAS/cuDNN handles and workspaces: on the card, outside PyTorch's allocator
CUDA_RESERVE_BYTES = 512 * 2**20
#: recomputation chunks tried for rev_/fullrev_ models (16 saves little over 8: docs/results.md)
CHUNKS = (1, 2, 4, 8)
#: accumulation factors tried on top of the recipe's (micro-batches of at least MIN_MICRO_BATCH)
ACCUM_FACTORS = (1, 2, 4, 8)
MIN_MICRO_BATCH = 4
# Step time at K relative to K = 1 (docs/results.md, "Batch-chunked recomputation": single-threaded CPU,
# width 8; rev/fullrev_dfresnet233 and rev/fullrev_resnet293 stand for their families). K = 2 was not
# measured: the geometric mean of K = 1 and K = 4.
RECOMPUTE_COST: dict[tuple[str, str], dict[int, float]] = {
    ("rev", "dfresnet"): {1: 1.0, 4: 1.12, 8: 2.11},
    ("fullrev", "dfresnet"): {1: 1.0, 4: 1.37, 8: 2.30},
    ("rev", "resnet"): {1: 1.0, 4: 1.54, 8: 2.16},
    ("fullrev", "resnet"): {1: 1.0, 4: 1.46, 8: 1.99},
}
#: activation checkpointing: one extra forward per unit, as Type I's recomputation (measured 1.29-1.37x)
CHECKPOINT_COST = 1.33
#: each extra micro-batch adds this fraction of a step (benchmarks/accumulation.py, CPU; see results.md)
ACCUM_OVERHEAD = 0.05


@dataclass(frozen=True)
class Recipe:
    """What the config trains, per process: model, step shapes and choices (see :class:`Plan`)."""

    model: str
    model_args: dict[str, Any]  # get_model kwargs except recompute_chunks / checkpoint_blocks
    batch_size: int
    accum_steps: int
    frames: int
    num_classes: int
    optimizer: str
    optimizer_args: dict[str, Any]
    precision: str
    recompute_chunks: int = 1
    checkpoint_blocks: bool = False

    @property
    def plan(self) -> Plan:
        """The recipe's own plan (cost 1 by definition)."""
        return Plan(
            self.batch_size, self.accum_steps, self.recompute_chunks, self.checkpoint_blocks, self.precision
        )


@dataclass(frozen=True, order=True)
class Plan:
    """One way of computing the recipe's step: ``micro_batch`` x ``accum_steps`` samples per process."""

    micro_batch: int
    accum_steps: int
    recompute_chunks: int
    checkpoint_blocks: bool
    precision: str

    def describe(self) -> str:
        parts = [f"{self.micro_batch} x {self.accum_steps}", self.precision]
        if self.recompute_chunks > 1:
            parts.append(f"K={self.recompute_chunks}")
        if self.checkpoint_blocks:
            parts.append("checkpointed blocks")
        return ", ".join(parts)


@dataclass
class Candidate:
    """A plan with its cost, whether it may be chosen, and (once predicted) its peak and fit."""

    plan: Plan
    cost: float
    changes_bn: bool  # micro-batch differs from the recipe's batch_size
    allowed: bool
    peak: int | None = None  # predicted allocated bytes at the step's peak
    need: int | None = None  # peak + allocator margin + reserve
    fits: bool | None = None
    chosen: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.plan), **{k: v for k, v in vars(self).items() if k != "plan"}}


@dataclass
class PlanResult:
    """The outcome of :func:`choose_plan`; ``chosen`` is None when nothing allowed fits (see ``message``)."""

    budget: int
    reserve: int
    candidates: list[Candidate]
    chosen: Candidate | None
    message: str
    smallest: Candidate | None = None  # the least-memory allowed plan, when nothing fits

    def to_json(self) -> dict[str, Any]:
        """The record written into config.yaml (``memory_plan``) and printed by ``--json``."""
        return {
            "budget_bytes": self.budget,
            "reserve_bytes": self.reserve,
            "allocator_margin": ALLOCATOR_MARGIN,
            "chosen": None if self.chosen is None else self.chosen.to_json(),
            "message": self.message,
            "candidates": [c.to_json() for c in self.candidates],
        }


def half_precision(device: torch.device | str | None) -> str:
    """bf16 where the card (or CPU) has it, else fp16 (pre-Ampere cards such as the 2080Ti)."""
    device = torch.device(device or "cpu")
    # native only: torch >= 2.4's is_bf16_supported() also counts a 2080Ti's emulated bf16
    if device.type == "cuda" and torch.cuda.is_available() and native_bf16(device) is None:
        return "fp16"
    return "bf16"


def step_cost(recipe: Recipe, plan: Plan) -> float:
    """Predicted step time of ``plan`` relative to the recipe's own plan (module docstring)."""
    from memsv_cli.models import parse_model_name

    variant, family, _ = parse_model_name(recipe.model)

    def cost(p: Plan) -> float:
        c = 1.0 + ACCUM_OVERHEAD * (p.accum_steps - 1)
        if variant != "vanilla":
            table = RECOMPUTE_COST[(variant, family)]
            k = p.recompute_chunks
            c *= table.get(k) or (table[4] ** 0.5 if k == 2 else table[max(x for x in table if x <= k)])
        return c * (CHECKPOINT_COST if p.checkpoint_blocks else 1.0)

    return cost(plan) / cost(recipe.plan)


def enumerate_plans(recipe: Recipe, half: str | None) -> list[Plan]:
    """Every plan of the recipe: accumulation factors x chunks (rev) or checkpointing (vanilla) x precisions
    (the recipe's, plus ``half`` when given and the recipe is fp32)."""
    from memsv_cli.models import parse_model_name

    variant = parse_model_name(recipe.model)[0]
    total = recipe.batch_size * recipe.accum_steps
    accums = [recipe.accum_steps * f for f in ACCUM_FACTORS if total % (recipe.accum_steps * f) == 0]
    micro = [(total // a, a) for a in accums if total // a >= min(MIN_MICRO_BATCH, recipe.batch_size)]
    chunks = CHUNKS if variant != "vanilla" else (1,)
    ckpt = (False, True) if variant == "vanilla" else (False,)
    precisions = [recipe.precision] + ([half] if half and recipe.precision == "fp32" else [])
    return [Plan(b, a, k, c, p) for b, a in micro for k in chunks if k <= b for c in ckpt for p in precisions]


def plan_setup(recipe: Recipe, plan: Plan) -> tuple[Callable[[], torch.nn.Module], StepSetup]:
    """The model builder and step setup that :func:`predict_peak` profiles for ``plan``."""
    from memsv_cli import models

    kwargs = dict(recipe.model_args)
    if plan.recompute_chunks > 1:
        kwargs["recompute_chunks"] = plan.recompute_chunks
    if plan.checkpoint_blocks:
        kwargs["checkpoint_blocks"] = True
    setup = StepSetup(
        batch_size=plan.micro_batch,
        frames=recipe.frames,
        feat_dim=int(kwargs.get("feat_dim", 80)),
        num_speakers=recipe.num_classes,
        embed_dim=int(kwargs.get("embed_dim", 256)),
        optimizer=recipe.optimizer,
        precision=plan.precision,
        accum_steps=plan.accum_steps,
    )
    return (lambda: models.get_model(recipe.model, **kwargs)), setup


def predict_peak(recipe: Recipe, plan: Plan, method: str = "meta") -> int:
    """Allocated bytes at the peak of one training step under ``plan`` (the profiler, ``method``)."""
    from memsv_cli.optim import build_optimizer

    build, setup = plan_setup(recipe, plan)
    args = {"lr": 0.1, **recipe.optimizer_args}  # only which states exist matters, not their values

    def optimizer(name: str, params: list) -> torch.optim.Optimizer:
        return build_optimizer(name, params, **args)

    return measure_step(build, setup, method, optimizer).total


def required_bytes(peak: int, reserve: int) -> int:
    """What a plan needs of the card: the peak, the allocator's margin and the fixed reserve."""
    return int(peak * (1 + ALLOCATOR_MARGIN)) + reserve


def _deviations(recipe: Recipe, plan: Plan) -> tuple[int, int]:
    """Tie-break among equal costs: keep the recipe's precision, then change as little as possible."""
    base = recipe.plan
    changed = sum(getattr(plan, f.name) != getattr(base, f.name) for f in dataclasses.fields(Plan))
    return int(plan.precision != base.precision), changed


def _least_memory(candidates: list[Candidate], recipe: Recipe) -> Candidate:
    """The plan with the smallest peak, assuming peaks fall with the micro-batch, with K, with
    checkpointing and with half precision (what the profiler shows for every model in docs/results.md)."""
    return min(
        candidates,
        key=lambda c: (
            c.plan.micro_batch,
            -c.plan.recompute_chunks,
            not c.plan.checkpoint_blocks,
            c.plan.precision == recipe.precision,
        ),
    )


def choose_plan(
    recipe: Recipe,
    budget: int,
    *,
    reserve: int = 0,
    allow_micro_batch: bool = False,
    half: str | None = None,
    predict: Callable[[Recipe, Plan], int] = predict_peak,
    predict_all: bool = False,
) -> PlanResult:
    """The cheapest allowed plan whose :func:`required_bytes` fit ``budget`` bytes.

    Candidates are predicted in order of cost, so the search stops at the first allowed fit; the plans
    not allowed (other micro-batch) met on the way are predicted too, to show what the flag would buy.
    When the cheapest (the recipe's own plan) does not fit, the least-memory allowed plan is predicted
    next: if even it does not fit, nothing does, and the message names its peak and the least-memory
    plan of all. ``predict_all`` predicts every candidate
    (the full table of ``profile-memory --gpu-memory --all-plans``).
    """
    cands = [
        Candidate(p, step_cost(recipe, p), p.micro_batch != recipe.batch_size, False)
        for p in enumerate_plans(recipe, half)
    ]
    for c in cands:
        c.allowed = allow_micro_batch or not c.changes_bn

    def evaluate(c: Candidate) -> Candidate:
        if c.peak is None:
            c.peak = predict(recipe, c.plan)
            c.need = required_bytes(c.peak, reserve)
            c.fits = c.need <= budget
        return c

    cands.sort(key=lambda c: (round(c.cost, 6), _deviations(recipe, c.plan), c.plan))
    chosen, smallest = None, None
    if cands[0].allowed and evaluate(cands[0]).fits:  # the cheapest plan (usually the recipe's) fits
        chosen = cands[0]
    else:
        smallest = evaluate(_least_memory([c for c in cands if c.allowed], recipe))
        for c in cands if smallest.fits else ():
            if evaluate(c).fits and c.allowed:
                chosen = c
                break
    if predict_all:
        for c in cands:
            evaluate(c)
    result = PlanResult(budget, reserve, cands, chosen, "", smallest=smallest)
    if chosen is not None:
        chosen.chosen = True
    result.message = _message(result, recipe, evaluate)
    return result


def _message(result: PlanResult, recipe: Recipe, evaluate: Callable[[Candidate], Candidate]) -> str:
    """One line: the choice, or why nothing fits and what would."""
    card = format_bytes(result.budget)
    c = result.chosen
    if c is not None:
        assert c.peak is not None and c.need is not None
        return (
            f"memory plan for {card}: {c.plan.describe()} (predicted peak {format_bytes(c.peak)}, "
            f"{format_bytes(c.need)} with the allocator margin and reserve; step time {c.cost:.2f}x the "
            "recipe's)"
        )
    s = result.smallest
    assert s is not None and s.peak is not None and s.need is not None
    line = (
        f"nothing fits {card}: the smallest peak the recipe allows is {format_bytes(s.peak)} "
        f"({s.plan.describe()}; {format_bytes(s.need)} with margin and reserve)"
    )
    overall = evaluate(_least_memory(result.candidates, recipe))
    if overall is not s and overall.fits:
        assert overall.need is not None
        line += (
            f"; micro-batches would reach {format_bytes(overall.need)} ({overall.plan.describe()}: "
            "allow with --allow-micro-batch, BatchNorm then normalises over the micro-batch)"
        )
    else:
        from memsv_cli.models import parse_model_name

        if recipe.precision == "fp32" and all(x.plan.precision == "fp32" for x in result.candidates):
            line += "; half precision (--allow-half-precision) may help"
        if parse_model_name(recipe.model)[0] == "vanilla":
            line += "; the reversible models (rev_/fullrev_) need far less"
    return line


def plan_table(result: PlanResult) -> list[str]:
    """The candidates as fixed-width text lines (train.log and the console), cheapest first."""
    lines = [
        f"{'micro x A':>10s} {'precision':>9s} {'K':>2s} {'ckpt':>4s} {'peak':>10s} {'+margin':>10s} "
        f"{'fits':>4s} {'cost':>6s}  note"
    ]
    for c in result.candidates:
        p = c.plan
        note = "chosen" if c.chosen else ""
        if c.changes_bn and not c.allowed:
            note = "micro-batch differs (--allow-micro-batch)"
        if c.peak is None:
            why = "costlier than the choice" if result.chosen is not None else "nothing fits"
            note = (note + "; " if note else "") + f"not predicted ({why})"
        lines.append(
            f"{f'{p.micro_batch} x {p.accum_steps}':>10s} {p.precision:>9s} {p.recompute_chunks:>2d} "
            f"{'yes' if p.checkpoint_blocks else 'no':>4s} "
            f"{'-' if c.peak is None else format_bytes(c.peak):>10s} "
            f"{'-' if c.need is None else format_bytes(c.need):>10s} "
            f"{'-' if c.fits is None else ('yes' if c.fits else 'no'):>4s} {c.cost:5.2f}x  {note}".rstrip()
        )
    return lines
