"""The reversible core: one coupling rule and one autograd Function that walks the chain backwards.

Coupling (PAPER.md, half-residual form with i-RevNet down-sampling). One :class:`HalfStep` maps two
streams ``(a, b)`` of ``C`` channels to::

    c = R(b)
    d = R(a) + P(f(b[:, :in_ch]))

``f`` is a vanilla block's residual branch, reading the first ``in_ch`` ("active") channels and writing
``out_ch`` channels. ``R`` is the identity for a shape-preserving step; for a stride ``(sf, st)`` step it
is space-to-depth ("psi", ``C x H x W -> sf*st*C x H/sf x W/st``) followed by zero channels up to
``out_ch`` where psi gives fewer. ``P`` zero-fills f's output to the stream width. The inverse is exact up
to rounding: ``b = R^-1(c)``, ``a = R^-1(d - P(f(b)))``. ``R`` is a permutation plus zero padding, so its
adjoint is its inverse, which is what backward uses for the stream gradients.

:class:`ReversibleChain` runs a list of half-steps. When gradients are needed and
``reversible_backward`` is on, it goes through :class:`_ChainFunction`, which keeps only the chain's two
output streams; backward walks the steps in reverse, and each step owns its backward
(:meth:`HalfStep.backward_step`: :class:`Streams` ``(c, d, gc, gd)`` in, ``(a, b, ga, gb)`` out, plus a
:class:`BackwardContext`), which rebuilds the step's input and re-runs f once with grad, so a step costs
one extra f forward. Guarantees, each tested in ``tests/test_reversible.py``:

- parameters are inputs of the Function, so their gradients reach autograd normally (``.grad``,
  ``torch.autograd.grad``, DDP hooks);
- BatchNorm running statistics and ``num_batches_tracked`` change once per training step: the
  recomputation uses batch statistics with ``track_running_stats`` switched off for its duration;
- random state (dropout) consumed by a step is recorded and replayed when it is recomputed, and under
  ``torch.autocast`` f runs in the autocast dtype, in forward and recomputation, while the streams stay
  in their own (fp32) dtype (both through one :class:`ReplayState` per step);
- no tensor the caller owns is freed or modified (only the Function's own intermediates are updated in
  place, which saves a stream copy per step);
- eval mode, ``torch.no_grad()`` or ``reversible_backward=False`` run the plain loop, at no extra cost
  (``False`` caches every intermediate like any network: the plain-autograd reference).

``recompute_chunks = K > 1`` (opt-in; tests in ``tests/test_reversible_chunks.py``) recomputes and
differentiates each step's f (and each :class:`Recomputed` module) over K micro-batches, so one
micro-batch's saved tensors of f are alive at a time; gradients stay exact because the BatchNorms use
the forward's batch statistics and the full-batch backward (:mod:`memsv_cli.models.chunked`). The
guarantees above hold unchanged; a branch with a layer not in the owner's ``per_sample`` types
(dropout) keeps the unchunked recomputation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import get_device_states, set_device_states

from memsv_cli.models.chunked import PER_SAMPLE, BNState, capture_bn_stats, chunkable, chunked_vjp

ParamGrads = tuple[torch.Tensor | None, ...]


def space_to_depth(x: torch.Tensor, sf: int, st: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, sf*st*C, H/sf, W/st)``, offset-major: channel ``k*C + c`` holds channel
    ``c`` at offset ``k = i*st + j``, so the first C channels are the plain stride-(sf, st) sub-sample."""
    if sf == 1 and st == 1:
        return x
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // sf, sf, w // st, st).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, sf * st * c, h // sf, w // st)


def depth_to_space(x: torch.Tensor, sf: int, st: int) -> torch.Tensor:
    """Exact inverse of :func:`space_to_depth`."""
    if sf == 1 and st == 1:
        return x
    n, k, h, w = x.shape
    c = k // (sf * st)
    x = x.reshape(n, sf, st, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c, h * sf, w * st)


def _shares_memory(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether two tensors live in the same storage (views included). Compares the storage objects
    themselves (``_cdata``), not data pointers, which are 0 for every fake (meta-estimate) tensor."""
    return x.untyped_storage()._cdata == y.untyped_storage()._cdata


def _scratch(x: torch.Tensor, protected: Sequence[torch.Tensor]) -> bool:
    """Whether ``x`` is the backward's own to overwrite: it shares memory with no protected tensor."""
    return not any(_shares_memory(x, t) for t in protected)


def _head(x: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` channels of ``x`` ``(B, C, H, W)``: a view, or ``x`` itself when ``k >= C``."""
    return x[:, :k] if k < x.shape[1] else x


def _add_head(base: torch.Tensor, x: torch.Tensor, sign: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """``base + sign * P(x)``: ``x`` ``(B, k, H, W)`` added to (``sign < 0``: subtracted from) the first
    ``k`` channels of ``base`` ``(B, C, H, W)``, ``k <= C`` (P zero-fills the rest). Written into
    ``base`` when ``inplace`` (the custom backward's own scratch), else a new tensor."""
    k = x.shape[1]
    if inplace:
        head = _head(base, k)
        head.add_(x) if sign > 0 else head.sub_(x)
        return base
    if k == base.shape[1]:
        return base + x if sign > 0 else base - x
    head = base[:, :k] + x if sign > 0 else base[:, :k] - x
    return torch.cat([head, base[:, k:]], 1)


@dataclass(frozen=True, eq=False)
class ReplayState:
    """What a recomputation re-enters to repeat one forward computation exactly: the autocast settings
    of the input's device type and the random state the forward started from.

    Use: ``state = ReplayState.capture(x)`` before the forward, ``state = state.after_forward(x)`` once
    it ran (drops the random state unless the forward drew random numbers, so dropout-free models store
    nothing), then :meth:`replay` around the recomputation, or :meth:`rng` and :meth:`autocast` apart
    where they must wrap different code. The generators are read and written with
    ``torch.utils.checkpoint``'s own ``get_device_states``/``set_device_states`` (the CPU generator plus
    the input's accelerator, as activation checkpointing does).
    """

    device_type: str  # the input's device type ("cpu", "cuda", ...)
    autocast_enabled: bool
    autocast_dtype: torch.dtype
    cpu_rng: torch.Tensor | None  # None: nothing to replay
    device_ids: tuple[int, ...] = ()  # accelerator generators read with get_device_states
    device_rngs: tuple[torch.Tensor, ...] = ()

    @classmethod
    def capture(cls, x: torch.Tensor) -> ReplayState:
        """The current autocast settings of ``x``'s device type and the CPU and ``x``'s device generators."""
        device_type = x.device.type
        cpu_rng = torch.get_rng_state()
        ids, rngs = get_device_states(x)  # ([], []) for CPU (also fake CPU) and meta tensors
        return cls(
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
            cpu_rng,
            tuple(ids),
            tuple(rngs),
        )

    def after_forward(self, x: torch.Tensor) -> ReplayState:
        """This state as the recomputation needs it: without the random state when the generators are
        where they were at :meth:`capture` (``x``: a tensor on the same device; the forward drew no
        random numbers, so nothing needs replaying and nothing is stored)."""
        if self.cpu_rng is None:
            return self
        cpu_now, (_, device_now) = torch.get_rng_state(), get_device_states(x)
        same = torch.equal(self.cpu_rng, cpu_now) and all(
            torch.equal(s, t) for s, t in zip(self.device_rngs, device_now, strict=True)
        )
        return dataclasses.replace(self, cpu_rng=None, device_ids=(), device_rngs=()) if same else self

    @contextlib.contextmanager
    def rng(self) -> Iterator[None]:
        """Within the block the generators start where the forward's did; after it the outer ones
        continue as if nothing ran (``torch.random.fork_rng``). A no-op without a stored state."""
        if self.cpu_rng is None:
            yield
            return
        # "cpu" when no accelerator state was taken: fork_rng always forks the CPU generator, but for
        # device_type "meta" it forks nothing at all.
        device_type = self.device_type if self.device_ids else "cpu"
        with torch.random.fork_rng(devices=list(self.device_ids), device_type=device_type):
            torch.set_rng_state(self.cpu_rng)
            if self.device_ids:
                set_device_states(list(self.device_ids), list(self.device_rngs), device_type=device_type)
            yield

    def autocast(self) -> torch.autocast:
        """``torch.autocast`` as in the forward (also when it was off: an outer autocast is not inherited)."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast_enabled)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """:meth:`rng` and :meth:`autocast` together: wrap the recomputation (not its backward)."""
        with self.rng(), self.autocast():
            yield


class Streams(NamedTuple):
    """The two streams at one point of a chain and the loss gradients w.r.t. them, all four
    ``(B, C, H, W)``. A step's backward maps its outputs' ``(c, d, gc, gd)`` to its inputs'
    ``(a, b, ga, gb)``; the fields are named for the latter."""

    a: torch.Tensor
    b: torch.Tensor
    ga: torch.Tensor
    gb: torch.Tensor


@dataclass(frozen=True, eq=False)
class BackwardContext:
    """Everything one half-step's backward needs besides the streams.

    Attributes:
        params: the step's parameters whose gradients are wanted, in ``parameters()`` order.
        replay: the step's forward RNG and autocast (:class:`ReplayState`).
        protected: tensors the caller or autograd owns (the chain's outputs and incoming gradients,
            unless the owner made them private): never written. Whatever else reaches the step is the
            backward's own and is updated in place.
        chunks, bn_stats: recompute f over ``chunks`` micro-batches with the forward's BatchNorm
            statistics (:func:`~memsv_cli.models.chunked.capture_bn_stats`); ``bn_stats`` None: unchunked.
    """

    params: Sequence[torch.Tensor]
    replay: ReplayState
    protected: tuple[torch.Tensor, ...] = ()
    chunks: int = 1
    bn_stats: dict[nn.Module, BNState] | None = None

    def scratch(self, out: Streams) -> tuple[bool, bool, bool, bool]:
        """Which of ``(c, d, gc, gd)`` the step may overwrite: those sharing memory with no protected
        tensor. Decided once, before the step writes anything (writes never change a storage)."""
        c, d, gc, gd = (_scratch(t, self.protected) for t in out)
        return c, d, gc, gd


class HalfStep(nn.Module):
    """``(a, b) -> (R(b), R(a) + P(f(b[:, :in_ch])))``; streams ``(B, stream_ch, H, W)``.

    Args:
        f: residual branch ``(B, in_ch, H, W) -> (B, out_ch, H/sf, W/st)``.
        in_ch, out_ch: active channels f reads and writes.
        stream_ch: channels of the incoming streams (``>= in_ch``).
        factor: ``(sf, st)`` down-sampling of this step; the outgoing streams have
            ``stream_out = max(sf*st*stream_ch, out_ch)`` channels.
    """

    def __init__(
        self, f: nn.Module, in_ch: int, out_ch: int, stream_ch: int, factor: tuple[int, int] = (1, 1)
    ) -> None:
        super().__init__()
        if in_ch > stream_ch:
            raise ValueError(f"f reads {in_ch} channels but the streams carry {stream_ch}")
        self.f = f
        self.in_ch, self.out_ch, self.stream_ch = in_ch, out_ch, stream_ch
        self.factor = tuple(factor)
        self.stream_out = max(stream_ch * self.factor[0] * self.factor[1], out_ch)

    def shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """R: space-to-depth, then zero channels up to ``stream_out``."""
        y = space_to_depth(x, *self.factor)
        if y.shape[1] < self.stream_out:
            y = torch.cat([y, y.new_zeros(y.shape[0], self.stream_out - y.shape[1], *y.shape[2:])], 1)
        return y

    def unshuffle(self, y: torch.Tensor) -> torch.Tensor:
        """R^-1 (also R's adjoint): drop the zero channels, then depth-to-space."""
        k = self.stream_ch * self.factor[0] * self.factor[1]
        return depth_to_space(y[:, :k] if y.shape[1] > k else y, *self.factor)

    def unshuffle_scratch(self, y: torch.Tensor, scratch: bool) -> torch.Tensor:
        """:meth:`unshuffle`, written back over ``y``'s own memory when ``y`` is scratch (dead after
        this call): a down-sampling step's depth-to-space then costs one stream-sized temporary at a
        time instead of a second copy of all four streams (the Type II transitions' backward peak)."""
        if not scratch or self.factor == (1, 1) or not y.is_contiguous():
            return self.unshuffle(y)
        out = self.unshuffle(y)  # depth-to-space permutes: a new tensor
        home = y.view(-1)[: out.numel()].view(out.shape)
        home.copy_(out)
        return home

    def branch(self, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """f on the active channels, cast to the stream dtype (f may run in bf16 under autocast)."""
        return self.f(_head(b, self.in_ch)).to(dtype)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, a_is_scratch: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``a_is_scratch``: ``a`` belongs to the custom Function and is dead after this step, so the
        update may be written into it (the plain path never sets it: autograd needs its inputs)."""
        ra = self.shuffle(a)
        scratch = a_is_scratch or not _shares_memory(ra, a)
        return self.shuffle(b), _add_head(ra, self.branch(b, a.dtype), +1.0, inplace=scratch)

    @torch.no_grad()
    def inverse(self, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild ``(a, b)`` from ``(c, d)`` (no grad; used by :func:`chain_reconstruction_error`)."""
        b = self.unshuffle(c)
        return self.unshuffle(_add_head(d, self.branch(b, d.dtype), -1.0)), b

    def backward_step(self, out: Streams, ctx: BackwardContext) -> tuple[Streams, ParamGrads]:
        """Rebuild this step's input from its output and back-propagate through it, one f evaluation.

        ``out``: the outputs ``c, d`` ``(B, stream_out, H/sf, W/st)`` and their gradients ``gc, gd``.
        Returns the inputs ``a, b`` ``(B, stream_ch, H, W)`` with their gradients ``ga, gb``, and the
        gradients of ``ctx.params`` (None where unused)::

            b = R^-1(c)        a = R^-1(d - P(f(b')))        (b' = b[:, :in_ch])
            ga = R^-1(gd)      gb = R^-1(gc) + P(vjp of f at b' with gd[:, :out_ch])

        Only f's recomputation runs under the forward's RNG and autocast; the vector-Jacobian product
        runs outside them like any backward. Scratch tensors (:meth:`BackwardContext.scratch`) are
        updated in place; ``ctx.chunks > 1`` recomputes f over micro-batches (``chunked_vjp``).
        """
        if ctx.chunks > 1 and ctx.bn_stats is not None:
            return self._chunked_backward_step(out, ctx, ctx.bn_stats)
        c, d, gc, gd = out
        own_c, own_d, own_gc, own_gd = ctx.scratch(out)
        b = self.unshuffle_scratch(c, own_c).detach()
        b_act = _head(b, self.in_ch).detach().requires_grad_(True)
        with torch.enable_grad(), ctx.replay.replay():
            fb = self.f(b_act).to(d.dtype)
        a = self.unshuffle_scratch(_add_head(d, fb.detach(), -1.0, inplace=own_d), own_d)
        grads = torch.autograd.grad(fb, [b_act, *ctx.params], _head(gd, self.out_ch), allow_unused=True)
        ga = self.unshuffle_scratch(gd, own_gd)  # after the vjp, which reads gd
        gb = self.unshuffle_scratch(gc, own_gc)
        if grads[0] is not None:
            gb = _add_head(gb, grads[0], +1.0, inplace=own_gc)
        return Streams(a, b, ga, gb), grads[1:]

    def _chunked_backward_step(
        self, out: Streams, ctx: BackwardContext, bn_stats: dict[nn.Module, BNState]
    ) -> tuple[Streams, ParamGrads]:
        """:meth:`backward_step` over ``ctx.chunks`` micro-batches (shapes as there): ``a`` is rebuilt
        micro-batch by micro-batch from pass 1's outputs inside ``d`` (a copy of it, if protected), and
        b's gradient from f is added into ``gb`` micro-batch by micro-batch (no full-size buffer)."""
        c, d, gc, gd = out
        own_c, own_d, own_gc, own_gd = ctx.scratch(out)
        b = self.unshuffle_scratch(c, own_c).detach()
        if not own_d:
            d = d.clone()
        gb = self.unshuffle_scratch(gc, own_gc)
        if not own_gc and _shares_memory(gb, gc):  # a view of the protected gc (a down-sampling
            gb = gb.clone()  # step's unshuffle has already copied): b's gradient is added into it
        d_head = _head(d, self.out_ch)

        def f(x: torch.Tensor) -> torch.Tensor:
            with ctx.replay.autocast():
                return self.f(x).to(d.dtype)

        def rebuild(sl: slice, fb: torch.Tensor) -> None:  # a = R^-1(d - P(f(b'))), one micro-batch
            d_head[sl].sub_(fb)

        with ctx.replay.rng():
            _, grads = chunked_vjp(
                f,
                _head(b, self.in_ch).detach(),
                _head(gd, self.out_ch),
                ctx.params,
                bn_stats,
                ctx.chunks,
                on_output=rebuild,
                gx_into=_head(gb, self.in_ch),
            )
        ga = self.unshuffle_scratch(gd, own_gd)
        return Streams(self.unshuffle_scratch(d, True), b, ga, gb), tuple(grads)


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalise with batch statistics but leave
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` alone (eval-mode layers are untouched:
    they already use, and do not update, their running statistics)."""
    switched = [
        m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
    ]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


def _select(params: Sequence[torch.Tensor], needs: Sequence[bool]) -> list[torch.Tensor]:
    """The parameters whose gradients autograd wants (``needs``: ``ctx.needs_input_grad`` for them)."""
    return [p for p, n in zip(params, needs, strict=True) if n]


def _spread(grads: Sequence[torch.Tensor | None], needs: Sequence[bool]) -> list[torch.Tensor | None]:
    """Gradients of the :func:`_select`-ed parameters back at their input positions (None elsewhere)."""
    it = iter(grads)
    return [next(it) if n else None for n in needs]


class _ChainFunction(torch.autograd.Function):
    """Forward without caching intermediates; backward rebuilds and recomputes step by step."""

    @staticmethod
    def forward(
        ctx, chain: ReversibleChain, a: torch.Tensor, b: torch.Tensor, *params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a_in, b_in = a, b
        replays: list[ReplayState] = []
        stats: list[dict[nn.Module, BNState] | None] = []
        for step, chunks in zip(chain.steps, chain.recompute_chunks, strict=True):
            replay = ReplayState.capture(a)
            chunked = chunks > 1 and chunkable(step.f, chain.per_sample)
            with capture_bn_stats(step.f) if chunked else contextlib.nullcontext() as bn_stats:
                # Intermediates are the Function's own and dead after use: update them in place.
                a, b = step(a, b, a_is_scratch=_scratch(a, (a_in, b_in)))
            stats.append(bn_stats)
            replays.append(replay.after_forward(a))
        # A one-step identity chain would hand back an input; autograd needs outputs of its own.
        a = a.clone() if a is a_in or a is b_in else a
        b = b.clone() if b is a_in or b is b_in else b
        ctx.chain, ctx.replays, ctx.bn_stats = chain, replays, stats
        ctx.save_for_backward(a, b)
        return a, b

    @staticmethod
    @once_differentiable  # the rebuilt graph is consumed inside; double backward is not supported
    def backward(ctx, ga: torch.Tensor, gb: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c, d = ctx.saved_tensors
        chain: ReversibleChain = ctx.chain
        if chain.outputs_private:
            # The outputs fed only the owner's merge, whose backward made ga and gb afresh: all four are
            # dead after this call, so the walk rebuilds the streams and their gradients inside them
            # (two full-size stream copies fewer at the chain's last step). The merge hands both
            # streams one gradient tensor; one of them gets its own copy.
            if _shares_memory(ga, gb):
                gb = gb.clone()
            protected: tuple[torch.Tensor, ...] = ()
        else:
            protected = (c, d, ga, gb)
        streams = Streams(c, d, ga, gb)
        # ``streams`` alone holds them from here: each is released as soon as the walk moves past it
        # (``protected`` keeps the caller's ones; the private ones die after being reused).
        del c, d, ga, gb
        params = [list(step.parameters()) for step in chain.steps]
        starts = list(itertools.accumulate((len(p) for p in params), initial=3))  # inputs: chain, a, b
        param_grads: list[torch.Tensor | None] = []
        for i in reversed(range(len(chain.steps))):
            needs = ctx.needs_input_grad[starts[i] : starts[i + 1]]
            step_ctx = BackwardContext(
                _select(params[i], needs),
                ctx.replays[i],
                protected,
                chain.recompute_chunks[i],
                ctx.bn_stats[i],
            )
            with frozen_batchnorm_stats(chain.steps[i]):
                streams, grads = chain.steps[i].backward_step(streams, step_ctx)
            param_grads[:0] = _spread(grads, needs)
        return (None, streams.ga, streams.gb, *param_grads)


class _RecomputeFunction(torch.autograd.Function):
    """Run a non-reversible module without keeping its internals; keep only its input and rebuild
    them in backward (activation checkpointing), with the same guarantees as the chain."""

    @staticmethod
    def forward(ctx, owner: Recomputed, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        module = owner.module
        replay = ReplayState.capture(x)
        chunked = owner.recompute_chunks > 1 and chunkable(module, owner.per_sample)
        with capture_bn_stats(module) if chunked else contextlib.nullcontext() as bn_stats:
            y = module(x)
        ctx.module, ctx.chunks, ctx.bn_stats = module, owner.recompute_chunks, bn_stats
        ctx.replay = replay.after_forward(x)
        ctx.save_for_backward(x)
        return y.clone() if y is x else y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``gy``: the output's gradient; returns ``(None, gx, *param_grads)`` as ``forward``'s inputs."""
        (x,) = ctx.saved_tensors
        module: nn.Module = ctx.module
        replay: ReplayState = ctx.replay
        need_x, need_params = ctx.needs_input_grad[1], ctx.needs_input_grad[2:]
        wanted = _select(list(module.parameters()), need_params)
        x_req = x.detach().requires_grad_(need_x)
        with frozen_batchnorm_stats(module):
            if ctx.bn_stats is not None:

                def f(inp: torch.Tensor) -> torch.Tensor:
                    with replay.autocast():
                        return module(inp)

                with replay.rng():
                    gx, grads = chunked_vjp(f, x.detach(), gy, wanted, ctx.bn_stats, ctx.chunks, need_x)
                return (None, gx, *_spread(grads, need_params))
            with torch.enable_grad(), replay.replay():
                y = module(x_req)
            inputs = ([x_req] if need_x else []) + wanted
            out = list(torch.autograd.grad(y, inputs, gy, allow_unused=True)) if inputs else []
        gx = out.pop(0) if need_x else None
        return (None, gx, *_spread(out, need_params))


class Recomputed(nn.Module):
    """Wrap a non-reversible module ``(B, ...) -> (B, ...)`` so that training caches only its input.

    Used for the stem (both types) and the Type I stage transitions: their internals (BN inputs, ReLU
    outputs) would otherwise dominate what the reversible parts save. Costs one extra forward of the
    module in backward. ``reversible_backward=False`` runs it plainly (the reference).
    ``recompute_chunks`` and ``per_sample`` as for :class:`ReversibleChain`.
    """

    def __init__(
        self,
        module: nn.Module,
        reversible_backward: bool = True,
        recompute_chunks: int = 1,
        per_sample: tuple[type[nn.Module], ...] = PER_SAMPLE,
    ) -> None:
        super().__init__()
        self.module = module
        self.reversible_backward = reversible_backward
        self.recompute_chunks = recompute_chunks
        self.per_sample = per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reversible_backward and torch.is_grad_enabled():
            params = list(self.module.parameters())
            if x.requires_grad or any(p.requires_grad for p in params):
                return _RecomputeFunction.apply(self, x, *params)
        return self.module(x)


class ReversibleChain(nn.Module):
    """A sequence of :class:`HalfStep` over two streams; ``(a, b) -> (a', b')``.

    Args:
        steps: the half-steps, in order; each step's ``stream_ch`` must be the previous ``stream_out``.
        reversible_backward: True: train without caching per-step activations (custom backward);
            False: plain autograd through the same function (the reference).
        recompute_chunks: K > 1 recomputes and differentiates each step's f over K micro-batches of
            the batch in backward (exact; :mod:`memsv_cli.models.chunked`): less peak memory, more time.
            One K for every step, or one per step (the models give large feature maps more chunks).
        per_sample: module types known to act on each sample on its own
            (:func:`~memsv_cli.models.chunked.chunkable`); a step whose f holds any other keeps the
            unchunked recomputation. The models add their own containers (``Unit``, ``ProjectedBranch``).
    """

    def __init__(
        self,
        steps: Sequence[HalfStep],
        reversible_backward: bool = True,
        recompute_chunks: int | Sequence[int] = 1,
        per_sample: tuple[type[nn.Module], ...] = PER_SAMPLE,
    ) -> None:
        super().__init__()
        for prev, nxt in zip(steps[:-1], steps[1:], strict=False):
            if prev.stream_out != nxt.stream_ch:
                raise ValueError(f"stream width mismatch: {prev.stream_out} then {nxt.stream_ch}")
        self.steps = nn.ModuleList(steps)
        self.reversible_backward = reversible_backward
        if isinstance(recompute_chunks, int):
            recompute_chunks = [recompute_chunks] * len(steps)
        if len(recompute_chunks) != len(steps):
            raise ValueError(f"{len(recompute_chunks)} chunk counts for {len(steps)} steps")
        self.recompute_chunks: tuple[int, ...] = tuple(recompute_chunks)
        self.per_sample = per_sample
        # Set by an owner that uses the outputs only transiently (ReversibleSequence): the backward may
        # then reuse them, and their incoming gradients, as scratch. Off, no caller tensor is touched.
        self.outputs_private = False

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reversible_backward and torch.is_grad_enabled():
            params = [p for step in self.steps for p in step.parameters()]
            if a.requires_grad or b.requires_grad or any(p.requires_grad for p in params):
                return _ChainFunction.apply(self, a, b, *params)
        for step in self.steps:
            a, b = step(a, b)
        return a, b


class ReversibleSequence(nn.Module):
    """Stream duplication around a chain: ``x -> chain(x, x) -> (a[:, :k] + b[:, :k]) / 2``.

    Input ``(B, C, H, W)``; output ``(B, out_ch, H', W')`` where ``out_ch`` is the active width of the
    last step (k = out_ch): the whole stream for Type I, the vanilla width for Type II.
    """

    def __init__(self, chain: ReversibleChain, out_ch: int) -> None:
        super().__init__()
        self.chain = chain
        self.out_ch = out_ch
        chain.outputs_private = True  # forward merges them at once and keeps neither

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
            x = x.float()  # streams stay fp32 under autocast; only the branches run in low precision
        a, b = self.chain(x, x)
        if self.out_ch < a.shape[1]:
            a, b = a[:, : self.out_ch], b[:, : self.out_ch]
        return (a + b) / 2


@torch.no_grad()
def chain_reconstruction_error(chain: ReversibleChain, a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest relative error ``|x_rebuilt - x| / |x|`` (Frobenius) over the rebuilt inputs of every
    step, rebuilding backwards from the chain's output as the custom backward does (so errors compound
    the same way). BatchNorm statistics are left unchanged; random state is replayed."""
    inputs, replays = [], []
    with frozen_batchnorm_stats(chain):
        for step in chain.steps:
            inputs.append((a, b))
            replay = ReplayState.capture(a)
            a, b = step(a, b)
            replays.append(replay.after_forward(a))
        worst = 0.0
        for i in reversed(range(len(chain.steps))):
            with replays[i].rng():  # the inverse runs in the caller's autocast, as the forward did
                a, b = chain.steps[i].inverse(a, b)
            for rebuilt, true in zip((a, b), inputs[i], strict=True):
                scale = true.double().norm().clamp_min(torch.finfo(torch.float64).tiny)
                worst = max(worst, float((rebuilt.double() - true.double()).norm() / scale))
    return worst
