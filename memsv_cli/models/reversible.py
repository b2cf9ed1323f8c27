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
output streams; backward rebuilds each step's input from its output and re-runs f once with grad, so a
step costs one extra f forward. Guarantees, each tested in ``tests/test_reversible.py``:

- parameters are inputs of the Function, so their gradients reach autograd normally (``.grad``,
  ``torch.autograd.grad``, DDP hooks);
- BatchNorm running statistics and ``num_batches_tracked`` change once per training step: the
  recomputation uses batch statistics with ``track_running_stats`` switched off for its duration;
- random state (dropout) consumed by a step is recorded and replayed when it is recomputed;
- under ``torch.autocast`` f runs in the autocast dtype, in forward and recomputation, while the streams
  stay in their own (fp32) dtype;
- no tensor the caller owns is freed or modified (only the Function's own intermediates are updated in
  place, which saves a stream copy per step);
- eval mode, ``torch.no_grad()`` or ``reversible_backward=False`` run the plain loop, at no extra cost
  (``False`` caches every intermediate like any network: the plain-autograd reference).

``recompute_chunks = K > 1`` (opt-in; tests in ``tests/test_reversible_chunks.py``) recomputes and
differentiates each step's f (and each :class:`Recomputed` module) over K micro-batches, so one
micro-batch's saved tensors of f are alive at a time; gradients stay exact because the BatchNorms use
the forward's batch statistics and the full-batch backward (:mod:`memsv_cli.models.chunked`). The
guarantees above hold unchanged; a branch with a layer not known to act per sample (dropout) keeps
the unchunked recomputation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from memsv_cli.models.chunked import BNState, capture_bn_stats, chunkable, chunked_vjp


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
        x = b[:, : self.in_ch] if self.in_ch < b.shape[1] else b
        return self.f(x).to(dtype)

    def _add(self, base: torch.Tensor, fb: torch.Tensor, sign: float, inplace: bool = False) -> torch.Tensor:
        """``base + sign * P(fb)``; written into ``base`` only when ``inplace`` (scratch tensors of the
        custom Function), else as a new tensor."""
        full = self.out_ch == base.shape[1]
        if inplace:
            head = base if full else base[:, : self.out_ch]
            head.add_(fb) if sign > 0 else head.sub_(fb)
            return base
        if full:
            return base + fb if sign > 0 else base - fb
        head = base[:, : self.out_ch] + fb if sign > 0 else base[:, : self.out_ch] - fb
        return torch.cat([head, base[:, self.out_ch :]], 1)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, a_is_scratch: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``a_is_scratch``: ``a`` belongs to the custom Function and is dead after this step, so the
        update may be written into it (the plain path never sets it: autograd needs its inputs)."""
        ra = self.shuffle(a)
        scratch = a_is_scratch or not _shares_memory(ra, a)
        return self.shuffle(b), self._add(ra, self.branch(b, a.dtype), +1.0, inplace=scratch)

    @torch.no_grad()
    def inverse(self, c: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild ``(a, b)`` from ``(c, d)`` (no grad; used by :func:`chain_reconstruction_error`)."""
        b = self.unshuffle(c)
        return self.unshuffle(self._add(d, self.branch(b, d.dtype), -1.0)), b

    def backward_step(
        self,
        c: torch.Tensor,
        d: torch.Tensor,
        gc: torch.Tensor,
        gd: torch.Tensor,
        params: Sequence[torch.Tensor],
        autocast: tuple[str, bool, torch.dtype] = ("cpu", False, torch.bfloat16),
        protected: Sequence[torch.Tensor] = (),
        chunks: int = 1,
        bn_stats: dict[nn.Module, BNState] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
        """Rebuild the input and back-propagate through this step with one f evaluation.

        ``autocast`` is ``(device_type, enabled, dtype)`` as in the forward pass; only the recomputation
        of f runs under it, the vector-Jacobian product runs outside like any backward. ``d`` and
        ``gc`` are updated in place unless they share memory with a tensor in ``protected`` (the
        chain's outputs and incoming gradients, which the caller and autograd own).
        Returns ``(a, b, ga, gb, param_grads)``; ``param_grads`` matches ``params`` (None where unused).
        ``chunks > 1`` with ``bn_stats`` (the forward's, :func:`capture_bn_stats`): f is recomputed and
        differentiated over micro-batches (:func:`~memsv_cli.models.chunked.chunked_vjp`).
        """
        if chunks > 1 and bn_stats is not None:
            return self._chunked_backward_step(c, d, gc, gd, params, autocast, protected, chunks, bn_stats)
        c_scratch, d_scratch, gc_scratch, gd_scratch = (_scratch(x, protected) for x in (c, d, gc, gd))
        b = self.unshuffle_scratch(c, c_scratch).detach()
        b_act = (b[:, : self.in_ch] if self.in_ch < b.shape[1] else b).detach().requires_grad_(True)
        with torch.enable_grad(), torch.autocast(autocast[0], dtype=autocast[2], enabled=autocast[1]):
            fb = self.f(b_act).to(d.dtype)
        a = self.unshuffle_scratch(self._add(d, fb.detach(), -1.0, inplace=d_scratch), d_scratch)
        g_fb = gd[:, : self.out_ch] if self.out_ch < gd.shape[1] else gd
        grads = torch.autograd.grad(fb, [b_act, *params], g_fb, allow_unused=True)
        del g_fb  # gd is rewritten next
        ga = self.unshuffle_scratch(gd, gd_scratch)
        gb = self.unshuffle_scratch(gc, gc_scratch)
        if grads[0] is not None:
            if gc_scratch:
                (gb if self.in_ch == gb.shape[1] else gb[:, : self.in_ch]).add_(grads[0])
            elif self.in_ch == gb.shape[1]:
                gb = gb + grads[0]
            else:
                gb = torch.cat([gb[:, : self.in_ch] + grads[0], gb[:, self.in_ch :]], 1)
        return a, b, ga, gb, grads[1:]

    def _chunked_backward_step(self, c, d, gc, gd, params, autocast, protected, chunks, bn_stats):  # noqa: ANN001, ANN202
        """:meth:`backward_step` over micro-batches: the input stream ``a`` is rebuilt micro-batch by
        micro-batch from the first pass's outputs, written into ``d`` (or a copy of it, if protected)."""
        b = self.unshuffle_scratch(c, _scratch(c, protected)).detach()
        b_act = (b[:, : self.in_ch] if self.in_ch < b.shape[1] else b).detach()
        if not _scratch(d, protected):
            d = d.clone()
        head = d if self.out_ch == d.shape[1] else d[:, : self.out_ch]

        def f(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(autocast[0], dtype=autocast[2], enabled=autocast[1]):
                return self.f(x).to(d.dtype)

        def rebuild(sl: slice, fb: torch.Tensor) -> None:
            head[sl].sub_(fb)

        g_fb = gd[:, : self.out_ch] if self.out_ch < gd.shape[1] else gd
        gc_scratch = _scratch(gc, protected)
        gb = self.unshuffle_scratch(gc, gc_scratch)
        if not gc_scratch and _shares_memory(gb, gc):  # a down-sampling step's unshuffle already copied
            gb = gb.clone()
        # b's gradient from f is added into gb micro-batch by micro-batch (no full-size buffer).
        gb_act = gb if self.in_ch == gb.shape[1] else gb[:, : self.in_ch]
        _, grads = chunked_vjp(f, b_act, g_fb, params, bn_stats, chunks, on_output=rebuild, gx_into=gb_act)
        ga = self.unshuffle_scratch(gd, _scratch(gd, protected))
        return self.unshuffle_scratch(d, True), b, ga, gb, tuple(grads)


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


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _same_rng(x: tuple, y: tuple) -> bool:
    return torch.equal(x[0], y[0]) and (x[1] is None or torch.equal(x[1], y[1]))


@contextlib.contextmanager
def _replay_rng(state: tuple | None, device: torch.device) -> Iterator[None]:
    """Run the block with the RNG set to ``state`` and restore the outer RNG after (no-op for None)."""
    if state is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


class _ChainFunction(torch.autograd.Function):
    """Forward without caching intermediates; backward rebuilds and recomputes step by step."""

    @staticmethod
    def forward(ctx, chain: ReversibleChain, a: torch.Tensor, b: torch.Tensor, *params: torch.Tensor):
        device = a.device
        a_in, b_in = a, b
        rng: list[tuple | None] = []
        stats: list[dict | None] = []
        for step, chunks in zip(chain.steps, chain.recompute_chunks, strict=True):
            before = _rng_state(device)
            chunked = chunks > 1 and chunkable(step.f)
            with capture_bn_stats(step.f) if chunked else contextlib.nullcontext() as bn_stats:
                # Intermediates are the Function's own and dead after use: update them in place.
                a, b = step(a, b, a_is_scratch=not (_shares_memory(a, a_in) or _shares_memory(a, b_in)))
            stats.append(bn_stats)
            # Keep a snapshot only for steps that drew random numbers: costs nothing without dropout.
            rng.append(None if _same_rng(before, _rng_state(device)) else before)
        # A one-step identity chain would hand back an input; autograd needs outputs of its own.
        a = a.clone() if a is a_in or a is b_in else a
        b = b.clone() if b is a_in or b is b_in else b
        ctx.chain, ctx.rng, ctx.device, ctx.bn_stats = chain, rng, device, stats
        ctx.autocast = (
            device.type,
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        ctx.save_for_backward(a, b)
        return a, b

    @staticmethod
    @once_differentiable  # the rebuilt graph is consumed inside; double backward is not supported
    def backward(ctx, ga: torch.Tensor, gb: torch.Tensor):
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
        needs = ctx.needs_input_grad[3:]
        all_grads: list[torch.Tensor | None] = []
        offset = len(needs)
        for i in reversed(range(len(chain.steps))):
            step = chain.steps[i]
            params = list(step.parameters())
            offset -= len(params)
            wanted = [p for p, n in zip(params, needs[offset : offset + len(params)], strict=True) if n]
            with _replay_rng(ctx.rng[i], ctx.device), frozen_batchnorm_stats(step):
                c, d, ga, gb, grads = step.backward_step(
                    c, d, ga, gb, wanted, ctx.autocast, protected, chain.recompute_chunks[i], ctx.bn_stats[i]
                )
            it = iter(grads)
            step_grads = [next(it) if n else None for n in needs[offset : offset + len(params)]]
            all_grads[:0] = step_grads
        return (None, ga, gb, *all_grads)


class _RecomputeFunction(torch.autograd.Function):
    """Run a non-reversible module without keeping its internals; keep only its input and rebuild
    them in backward (activation checkpointing), with the same guarantees as the chain."""

    @staticmethod
    def forward(ctx, module: nn.Module, chunks: int, x: torch.Tensor, *params: torch.Tensor):
        device = x.device
        before = _rng_state(device)
        chunked = chunks > 1 and chunkable(module)
        with capture_bn_stats(module) if chunked else contextlib.nullcontext() as bn_stats:
            y = module(x)
        ctx.rng = None if _same_rng(before, _rng_state(device)) else before
        ctx.module, ctx.device, ctx.chunks, ctx.bn_stats = module, device, chunks, bn_stats
        ctx.autocast = (
            device.type,
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        ctx.save_for_backward(x)
        return y.clone() if y is x else y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        (x,) = ctx.saved_tensors
        params = list(ctx.module.parameters())
        needs = ctx.needs_input_grad[1:]  # (chunks, x, *params): same offsets as before the chunks arg
        wanted = [p for p, n in zip(params, needs[2:], strict=True) if n]
        x_req = x.detach().requires_grad_(needs[1])
        device_type, enabled, dtype = ctx.autocast
        if ctx.bn_stats is not None:

            def f(inp: torch.Tensor) -> torch.Tensor:
                with torch.autocast(device_type, dtype=dtype, enabled=enabled):
                    return ctx.module(inp)

            with _replay_rng(ctx.rng, ctx.device), frozen_batchnorm_stats(ctx.module):
                gx, grads = chunked_vjp(f, x.detach(), gy, wanted, ctx.bn_stats, ctx.chunks, needs[1])
            it = iter(grads)
            return (None, None, gx, *[next(it) if n else None for n in needs[2:]])
        with _replay_rng(ctx.rng, ctx.device), frozen_batchnorm_stats(ctx.module):
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                y = ctx.module(x_req)
            inputs = ([x_req] if needs[1] else []) + wanted
            grads = iter(torch.autograd.grad(y, inputs, gy, allow_unused=True)) if inputs else iter(())
        gx = next(grads) if needs[1] else None
        return (None, None, gx, *[next(grads) if n else None for n in needs[2:]])


class Recomputed(nn.Module):
    """Wrap a non-reversible module ``(B, ...) -> (B, ...)`` so that training caches only its input.

    Used for the stem (both types) and the Type I stage transitions: their internals (BN inputs, ReLU
    outputs) would otherwise dominate what the reversible parts save. Costs one extra forward of the
    module in backward. ``reversible_backward=False`` runs it plainly (the reference).
    """

    def __init__(
        self, module: nn.Module, reversible_backward: bool = True, recompute_chunks: int = 1
    ) -> None:
        super().__init__()
        self.module = module
        self.reversible_backward = reversible_backward
        self.recompute_chunks = recompute_chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reversible_backward and torch.is_grad_enabled():
            params = list(self.module.parameters())
            if x.requires_grad or any(p.requires_grad for p in params):
                return _RecomputeFunction.apply(self.module, self.recompute_chunks, x, *params)
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
    """

    def __init__(
        self,
        steps: Sequence[HalfStep],
        reversible_backward: bool = True,
        recompute_chunks: int | Sequence[int] = 1,
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
    device = a.device
    inputs, rng = [], []
    with frozen_batchnorm_stats(chain):
        for step in chain.steps:
            inputs.append((a, b))
            before = _rng_state(device)
            a, b = step(a, b)
            rng.append(None if _same_rng(before, _rng_state(device)) else before)
        worst = 0.0
        for i in reversed(range(len(chain.steps))):
            with _replay_rng(rng[i], device):
                a, b = chain.steps[i].inverse(a, b)
            for rebuilt, true in zip((a, b), inputs[i], strict=True):
                scale = true.double().norm().clamp_min(torch.finfo(torch.float64).tiny)
                worst = max(worst, float((rebuilt.double() - true.double()).norm() / scale))
    return worst
