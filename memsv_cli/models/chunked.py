"""Exact batch-chunked vector-Jacobian products of a residual branch containing training-mode BatchNorm.

Recomputing a branch f with grad keeps all of f's saved tensors for the whole batch alive at once. With
``chunks = K`` the reversible backward instead recomputes f on K micro-batches, one at a time, so only
one micro-batch's saved tensors live at a time, while the gradients stay those of f on the whole batch.

The only layers that couple samples are BatchNorms that normalise with batch statistics. For those:

- the statistics are the forward pass's own: :func:`capture_bn_stats` records each layer's batch mean and
  ``1/sqrt(var + eps)`` while the forward runs (a few floats per channel);
- in the recomputation each such layer is replaced by :class:`_FixedStatsBN`, the same affine map with
  the recorded statistics, whose backward is the exact training-mode BN backward
  ``dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``. The two per-channel means need the
  whole batch, and ``dy`` needs the corrections of every BN between the layer and f's output. So a BN's
  *level* is 1 + the largest number of BNs on a path from it to the output; pass ``l`` (``l = 1..L``)
  runs every micro-batch forward and back-propagates only down to the inputs of the level-``l`` layers,
  summing their ``dy`` and ``dy * xhat``; a final pass then computes the input and parameter gradients
  with every correction known. Pass 1's outputs are handed to ``on_output`` (the chain rebuilds its
  input stream from them), so an inverted bottleneck (3 BNs in a row) costs 4 forwards of f and about 2
  backwards instead of 1 + 1.

Only branches built from layers known to act per sample (:data:`PER_SAMPLE` plus the caller's own
containers, :func:`chunkable`) are chunked; anything else (dropout, other normalisations) silently keeps
the unchunked recomputation, which is exact as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: torch layers that act on each sample on its own (``nn.Sequential``: a container whose own forward
#: does too; its children are checked one by one). Owners add their own such containers
#: (:func:`chunkable`'s ``per_sample``), so this general helper needs no model code.
PER_SAMPLE: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.ReLU,
    nn.Identity,
    _BatchNorm,
    nn.Sequential,
)


def chunkable(module: nn.Module, per_sample: tuple[type[nn.Module], ...] = PER_SAMPLE) -> bool:
    """Whether every sub-module of ``module`` (itself included) is exactly one of ``per_sample`` (any
    BatchNorm counts) and no ReLU is in-place: then splitting the batch changes nothing but the
    BatchNorms' statistics, which :func:`chunked_vjp` fixes."""
    return all(type(m) in per_sample or isinstance(m, _BatchNorm) for m in module.modules()) and not any(
        isinstance(m, nn.ReLU) and m.inplace for m in module.modules()
    )


def _batch_stat_layers(module: nn.Module) -> list[_BatchNorm]:
    """BatchNorms that normalise with batch statistics when called now."""
    return [
        m
        for m in module.modules()
        if isinstance(m, _BatchNorm) and (m.training or (m.running_mean is None and m.running_var is None))
    ]


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (BN statistics and their backward are computed in fp32 under autocast)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (like.dim() - 2)))


class BNState:
    """One BatchNorm's forward statistics and the two backward reductions of the whole batch."""

    def __init__(self, mean: torch.Tensor, invstd: torch.Tensor, count: int) -> None:
        self.mean, self.invstd, self.count = mean, invstd, count
        self.level = 0  # set from the first micro-batch's graph
        self.collect = False
        self.s1: torch.Tensor | float = 0.0  # sum(dy)
        self.s2: torch.Tensor | float = 0.0  # sum(dy * xhat)
        self.corr: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean(dy), mean(dy * xhat))


@contextlib.contextmanager
def capture_bn_stats(module: nn.Module) -> Iterator[dict[nn.Module, BNState]]:
    """Within the block, record the batch statistics each batch-statistics BN of ``module`` uses."""
    states: dict[nn.Module, BNState] = {}

    def hook(m: _BatchNorm, args: tuple) -> None:
        x = _wide(args[0].detach())
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=_dims(x), correction=0)
        states[m] = BNState(mean, torch.rsqrt(var + m.eps), x.numel() // x.shape[1])

    handles = [m.register_forward_pre_hook(hook) for m in _batch_stat_layers(module)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


class _FixedStatsBN(torch.autograd.Function):
    """``w * (x - mean) * invstd + b`` with recorded statistics; backward = the full-batch BN backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, state: BNState):  # noqa: ANN001, ANN205
        y = _xhat(x, state)  # in-place updates of one temporary: a micro-batch costs one extra map
        if weight is not None:
            y.mul_(_per_channel(_wide(weight), x)).add_(_per_channel(_wide(bias), x))
        ctx.state, ctx.dtype = state, x.dtype  # ``state`` also marks the graph node as a BN
        ctx.save_for_backward(x, weight)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        state: BNState = ctx.state
        dy = _wide(dy)  # not written: autograd may hand the same gradient to several nodes
        xhat = _xhat(x, state)
        dims = _dims(x)
        s1, s2 = dy.sum(dims), (dy * xhat).sum(dims)
        if state.collect:
            state.s1 = state.s1 + s1
            state.s2 = state.s2 + s2
        scale = state.invstd if weight is None else _wide(weight) * state.invstd
        if state.corr is None:
            dx = dy * _per_channel(scale, x)
        else:  # dy - mean(dy) - xhat * mean(dy * xhat), reusing xhat's memory
            corr = xhat.mul_(_per_channel(state.corr[1], x)).add_(_per_channel(state.corr[0], x))
            dx = torch.sub(dy, corr, out=corr).mul_(_per_channel(scale, x))
        dx = dx.to(ctx.dtype)
        if weight is None:
            return dx, None, None, None
        return dx, s2.to(weight.dtype), s1.to(weight.dtype), None


def _xhat(x: torch.Tensor, state: BNState) -> torch.Tensor:
    """``(x - mean) * invstd`` as a new tensor (at least fp32)."""
    return (_wide(x) - _per_channel(state.mean, x)).mul_(_per_channel(state.invstd, x))


@contextlib.contextmanager
def _fixed_stats(states: dict[nn.Module, BNState], inputs: dict[nn.Module, torch.Tensor]) -> Iterator[None]:
    """Within the block, the recorded BNs run as :class:`_FixedStatsBN`; ``inputs`` collects their inputs."""

    def make(m: _BatchNorm, state: BNState) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            inputs[m] = x
            return _FixedStatsBN.apply(x, m.weight, m.bias, state)

        return forward

    for m, state in states.items():
        m.forward = make(m, state)
    try:
        yield
    finally:
        for m in states:
            del m.forward


def chunked_vjp(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    g: torch.Tensor,
    params: Sequence[torch.Tensor],
    states: dict[nn.Module, BNState],
    chunks: int,
    need_x: bool = True,
    on_output: Callable[[slice, torch.Tensor], None] | None = None,
    gx_into: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Gradients of ``(f(x) * g).sum()`` w.r.t. ``x`` (when ``need_x``) and ``params``, computed over
    ``chunks`` micro-batches of dim 0 (see the module docstring). ``f`` must act per sample except for
    the BNs recorded in ``states`` (``f`` is called with grad enabled; wrap autocast/RNG around the call).
    ``on_output(slice, y)`` receives each micro-batch's output once (detached). ``gx_into``: add the input
    gradient into this tensor (shaped like ``x``) micro-batch by micro-batch instead of allocating one."""
    slices = _micro_batches(x.shape[0], chunks)
    for state in states.values():
        state.s1, state.s2, state.corr, state.collect = 0.0, 0.0, None, False
    inputs: dict[nn.Module, torch.Tensor] = {}
    gx = (torch.empty_like(x) if gx_into is None else gx_into) if need_x else None
    grads: list[torch.Tensor | None] = [None] * len(params)
    levels, level = None, 1
    with _fixed_stats(states, inputs):
        while True:
            final = levels is not None and level > levels
            for state in states.values():
                state.collect = not final and state.level == level
            for sl in slices:
                xc = x[sl].detach().requires_grad_(True)
                inputs.clear()
                with torch.enable_grad():
                    y = f(xc)
                if levels is None:  # first micro-batch of pass 1: mark BN nodes, derive the levels
                    levels = _assign_levels_from(y, states)
                    for state in states.values():
                        state.collect = state.level == level
                    final = levels == 0
                if on_output is not None and level == 1:
                    on_output(sl, y.detach())
                if final:
                    wanted = ([xc] if need_x else []) + list(params)
                    out = torch.autograd.grad(y, wanted, g[sl], allow_unused=True)
                    if need_x:
                        gx[sl].add_(out[0]) if gx_into is not None else gx[sl].copy_(out[0])
                        out = out[1:]
                    grads = [
                        o if acc is None else (acc if o is None else acc.add_(o))
                        for acc, o in zip(grads, out, strict=True)
                    ]
                else:
                    targets = [inputs[m] for m, s in states.items() if s.level == level]
                    torch.autograd.grad(y, targets, g[sl])
                del y
            if final:
                break
            _close_level(states, level)
            level += 1
    return gx, grads


def _micro_batches(n: int, chunks: int) -> list[slice]:
    """``min(chunks, n)`` consecutive slices covering ``range(n)``; sizes differ by at most one."""
    k = min(chunks, n)
    edges = [i * n // k for i in range(k + 1)]
    return [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _close_level(states: dict[nn.Module, BNState], level: int) -> None:
    """After pass ``level``: the level's BNs turn their summed ``dy``, ``dy * xhat`` into the means."""
    for state in states.values():
        if state.level == level:
            state.corr = (state.s1 / state.count, state.s2 / state.count)


def _assign_levels_from(y: torch.Tensor, states: dict[nn.Module, BNState]) -> int:
    """Levels of the BN layers in ``y``'s autograd graph (see the module docstring)."""
    by_id = {id(s): s for s in states.values()}
    order: list[object] = []
    seen: set[int] = set()

    def visit(node: object) -> None:
        stack = [(node, False)]
        while stack:
            cur, done = stack.pop()
            if cur is None:
                continue
            if done:
                order.append(cur)
                continue
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            stack.append((cur, True))
            for nxt, _ in cur.next_functions:
                if nxt is not None and id(nxt) not in seen:
                    stack.append((nxt, False))

    visit(y.grad_fn)
    above: dict[int, int] = {}
    for node in reversed(order):  # reversed post-order: every node after all nodes above it
        depth = above.get(id(node), 0)
        state = by_id.get(id(getattr(node, "state", None)))
        if state is not None:
            state.level = depth + 1
            depth += 1
        for nxt, _ in node.next_functions:
            if nxt is not None:
                above[id(nxt)] = max(above.get(id(nxt), 0), depth)
    return max((s.level for s in states.values()), default=0)
