"""What SGD8bit, Adam8bit and AdamW8bit share: state layout, chunking, state_dict checks.

State of a parameter trained with 8-bit state (``numel >= min_8bit_size`` and group ``optim_bits == 8``):
``{"step": int, "<name>_q": uint8 (param shape), "<name>_absmax": fp32 (ceil(numel / block_size),)}``
for each state ``<name>`` (``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``). Other parameters keep
torch.optim's unquantised layout ``{"step": int, "<name>": Tensor}`` (the parameter's shape, strides and
dtype; "fp32 state" below). ``state_dict()`` adds ``"memsv_8bit": {"format": 1, "map_version":
MAP_VERSION}`` and every param group records its ``block_size``; ``load_state_dict`` refuses a state
saved under another map version or block size.

The per-group update loop lives here once (:meth:`Blockwise8bitOptimizer._update_group`); an optimizer
supplies only its hyper-parameters and kernels (see the class docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from memsv_cli.errors import MemsvError
from memsv_cli.optim.fused import CHUNK_ELEMENTS, QuantTables, Workspace, fusable
from memsv_cli.optim.quant import MAP_VERSION, dequantize_blockwise, num_blocks, quantize_blockwise

STATE_FORMAT = 1
STATE_KEY = "memsv_8bit"
# A tensor gets 8-bit state once it fills one 256-element quantisation block. PAPER.md said 4096 (the
# bitsandbytes default, two of its old 2048-element blocks); at 4096 a DF-ResNet's many BatchNorm and
# depthwise tensors keep 1.4-1.6% of its parameters in fp32 state and its states come to 0.265x of
# 32-bit instead of <= 0.26x. Quantised BN states train as well as fp32 ones (tests/test_optim8bit.py,
# docs/design.md "8-bit optimizers").
DEFAULT_MIN_8BIT_SIZE = 256
_EIGHT_BIT_KEYS = ("block_size", "min_8bit_size", "optim_bits")


@dataclass
class Chunk:
    """One run of whole blocks of an 8-bit parameter, what a kernel updates in place.

    param, grad: (n,) views of the parameter (any float dtype) and its gradient; codes: uint8 (n,) and
    absmax: fp32 (ceil(n / block_size),) per state, in ``STATE_NAMES`` order; ws: the work buffers;
    tables: the quantiser of each state's map; step: this parameter's step count, 1 on its first step.
    """

    param: torch.Tensor
    grad: torch.Tensor
    codes: list[torch.Tensor]
    absmax: list[torch.Tensor]
    ws: Workspace
    tables: list[QuantTables]
    block_size: int
    step: int


class UnsupportedOptimizerArgument(MemsvError, ValueError):
    """An argument of the torch.optim twin that the 8-bit optimizer cannot honour (never ignored)."""


class OptimizerStateError(MemsvError, ValueError):
    """A state_dict that does not fit this optimizer (other map version, block size or layout)."""


def reject_unsupported(cls_name: str, **flags: Any) -> None:
    """Raise for each torch.optim option that is set to something we do not implement.

    ``foreach``/``fused`` choose torch's kernels; ours is its own chunked kernel, so only None/False
    (no request) are accepted. ``amsgrad``, ``capturable`` and ``differentiable`` change semantics.
    """
    for name, value in flags.items():
        if value not in (None, False):
            raise UnsupportedOptimizerArgument(
                f"{cls_name} does not support {name}={value!r}; use the 32-bit torch.optim optimizer instead"
            )


class Blockwise8bitOptimizer(torch.optim.Optimizer):
    """Base class: block-wise 8-bit states, chunked updates, checked state dicts.

    :meth:`_update_group` is the one update loop of every 8-bit optimizer: state init and step count,
    the split into 8-bit and fp32-state parameters, work buffers, the chunk loop over whole blocks,
    the copy back of non-contiguous parameters, and one fused call per device for the fp32-state
    tensors. A subclass supplies only what differs between optimizers:

    - ``STATE_NAMES``: state name -> whether its map is signed, in the order its kernels take them;
    - :meth:`_hyperparams`: the group's hyper-parameters as Python scalars, read once per step;
    - :meth:`_update_chunk`: one chunk of an 8-bit parameter (a ``fused.*_chunk`` kernel);
    - :meth:`_update_fp32_batch`: fp32-state fp32 tensors of one device in one torch fused kernel;
    - :meth:`_update_fp32`: one fp32-state tensor that the fused kernel cannot take (bf16/fp16).

    A mode without state (SGD with momentum 0) is handled by overriding :meth:`_update_group` and
    calling ``super()`` otherwise.
    """

    STATE_NAMES: dict[str, bool] = {}
    # torch.optim twin's param-group options that we do not keep (exported with these values), and
    # whether the twin keeps a "step" tensor in each parameter's state.
    TORCH_GROUP_DEFAULTS: dict[str, Any] = {}
    TORCH_STEP_IN_STATE = False

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        _check_int("block_size", defaults["block_size"], minimum=1)
        _check_int("min_8bit_size", defaults["min_8bit_size"], minimum=0)
        _check_bits(defaults["optim_bits"])
        self._tables: dict[tuple[bool, torch.device], QuantTables] = {}
        # Per-step bookkeeping computed once: state keys, and each device's tables, in STATE_NAMES order
        # (a step pays this per parameter, and small tensors are many).
        self._state_keys = [(f"{name}_q", f"{name}_absmax") for name in self.STATE_NAMES]
        self._device_tables: dict[torch.device, list[QuantTables]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch.optim's add_param_group, also validating the group's 8-bit options."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_int("block_size", group["block_size"], minimum=1)
        _check_int("min_8bit_size", group["min_8bit_size"], minimum=0)
        _check_bits(group["optim_bits"])

    # -- helpers for subclasses ------------------------------------------------------------------
    def tables(self, signed: bool, device: torch.device) -> QuantTables:
        """The (cached) quantiser tables for one map on one device."""
        key = (signed, device)
        if key not in self._tables:
            self._tables[key] = QuantTables.build(signed, device)
        return self._tables[key]

    def constant_tensors(self) -> list[torch.Tensor]:
        """The cached quantiser tables' tensors: device memory the optimizer holds outside ``state``
        (about 0.5 MiB per map and device), for memory accounting."""
        return [t for tables in self._tables.values() for t in (tables.code, tables.lut, tables.threshold)]

    @staticmethod
    def uses_8bit(param: torch.Tensor, group: dict[str, Any]) -> bool:
        """Whether ``param`` gets 8-bit state: group allows it and it has >= min_8bit_size elements."""
        return group["optim_bits"] == 8 and param.numel() >= group["min_8bit_size"]

    def init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """Create (zeroed) state for ``param``; 8-bit codes of zero decode to exactly 0."""
        state = self.state[param]
        if state:
            return state
        state["step"] = 0
        if self.uses_8bit(param, group):
            nb = num_blocks(param.numel(), group["block_size"])
            for name, signed in self.STATE_NAMES.items():
                zero_code = 127 if signed else 0
                # Contiguous whatever the parameter's strides: codes are read in row-major blocks.
                state[f"{name}_q"] = torch.full(
                    param.shape, zero_code, dtype=torch.uint8, device=param.device
                )
                state[f"{name}_absmax"] = torch.zeros(nb, dtype=torch.float32, device=param.device)
        else:
            for name in self.STATE_NAMES:
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def chunks(numel: int, block_size: int) -> Iterator[tuple[int, int, int, int]]:
        """``(start, end, first_block, end_block)`` for runs of whole blocks of <= CHUNK_ELEMENTS."""
        step = _chunk_len(block_size)
        for start in range(0, numel, step):
            end = min(numel, start + step)
            yield start, end, start // block_size, num_blocks(end, block_size)

    def workspace_for(self, params: list[torch.Tensor], block_size: int) -> Workspace | None:
        """Work buffers big enough for the largest chunk among ``params`` (all on one device)."""
        if not params:
            return None
        chunk = _chunk_len(block_size)
        largest = max(num_blocks(p.numel(), block_size) * block_size for p in params)
        return Workspace(min(chunk, largest), params[0].device)

    def workspaces_for(self, params: list[torch.Tensor], block_size: int) -> dict[torch.device, Workspace]:
        """One :meth:`workspace_for` per device among ``params`` (a group may span devices)."""
        devices = {p.device for p in params}
        out = {}
        for device in devices:
            ws = self.workspace_for([p for p in params if p.device == device], block_size)
            assert ws is not None
            out[device] = ws
        return out

    # -- public API -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the loss, as in torch.optim."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if torch.is_complex(p):
                    raise UnsupportedOptimizerArgument(
                        f"{type(self).__name__} does not support complex params"
                    )
                params.append(p)
            if params:
                self._update_group(group, params)
        return loss

    # -- the shared update loop ------------------------------------------------------------------
    def _update_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """One step for ``params`` (those of ``group`` that have a gradient), in parameter order.

        8-bit and unfusable fp32-state parameters are updated as they come; fusable fp32-state
        tensors (biases, BatchNorm, small layers) are collected per (device, first step) and updated
        at the end in one fused call each, as one call per tiny tensor would cost more than its maths.
        The first-step flag is part of the key because SGD's kernel takes one ``is_first_step`` per call.
        """
        hp = self._hyperparams(group)
        bs = group["block_size"]
        workspaces = self.workspaces_for([p for p in params if self.uses_8bit(p, group)], bs)
        batched: dict[tuple[torch.device, bool], list[torch.Tensor]] = {}
        for p in params:
            state = self.init_state(p, group)
            state["step"] += 1
            if self.uses_8bit(p, group):
                self._update_8bit_param(p, state, workspaces[p.device], bs, hp)
            elif fusable(p, p.grad):
                batched.setdefault((p.device, state["step"] == 1), []).append(p)
            else:
                self._update_fp32(p, state, hp)
        for (_, first), ps in batched.items():
            self._update_fp32_batch(ps, [self.state[p] for p in ps], hp, first)

    def _update_8bit_param(
        self, p: torch.Tensor, state: dict[str, Any], ws: Workspace, block_size: int, hp: dict[str, Any]
    ) -> None:
        """Update ``p`` and its 8-bit states chunk by chunk (runs of whole blocks, see :meth:`chunks`).

        Codes are row-major (``init_state``), so a non-contiguous parameter (channels_last, a transpose)
        is updated through a contiguous copy and written back: the copy is bounded by that parameter.
        """
        tables = self._device_tables.get(p.device)
        if tables is None:
            tables = [self.tables(signed, p.device) for signed in self.STATE_NAMES.values()]
            self._device_tables[p.device] = tables
        codes = [state[q].view(-1) for q, _ in self._state_keys]
        absmax = [state[a] for _, a in self._state_keys]
        flat_p, flat_g = _flat(p), _flat(p.grad)
        whole = Chunk(flat_p, flat_g, codes, absmax, ws, tables, block_size, state["step"])
        if p.numel() <= _chunk_len(block_size):
            # One chunk covers the parameter (the common case): pass the whole tensors. Slicing costs
            # ~2 us per tensor, which a model of many small tensors pays per parameter and step.
            self._update_chunk(whole, hp)
        else:
            for s, e, b0, b1 in self.chunks(p.numel(), block_size):
                part = Chunk(
                    flat_p[s:e], flat_g[s:e], [c[s:e] for c in codes], [a[b0:b1] for a in absmax], ws,
                    tables, block_size, whole.step,
                )  # fmt: skip
                self._update_chunk(part, hp)
        if flat_p.data_ptr() != p.data_ptr():
            p.copy_(flat_p.view_as(p))

    # -- what each optimizer supplies -----------------------------------------------------------
    def _hyperparams(self, group: dict[str, Any]) -> dict[str, Any]:
        """The group's hyper-parameters as Python floats/bools, keyed as the subclass's kernels want."""
        raise NotImplementedError

    def _update_chunk(self, chunk: Chunk, hp: dict[str, Any]) -> None:
        """Update one :class:`Chunk` of an 8-bit parameter in place and re-quantise its states."""
        raise NotImplementedError

    def _update_fp32_batch(
        self, params: list[torch.Tensor], states: list[dict[str, Any]], hp: dict[str, Any], first: bool
    ) -> None:
        """Update fp32 params with fp32 states (all on one device) in one torch fused kernel call.

        ``states[i]`` is ``params[i]``'s state (torch.optim's names, ``step`` already counted);
        ``first``: this is every one of these parameters' first step.
        """
        raise NotImplementedError

    def _update_fp32(self, param: torch.Tensor, state: dict[str, Any], hp: dict[str, Any]) -> None:
        """Update one fp32-state parameter the fused kernel cannot take (bf16/fp16, other devices)."""
        raise NotImplementedError

    # -- state inspection and conversion --------------------------------------------------------
    def dequantized_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """The states of ``param`` as fp32 tensors under torch.optim's names (a copy; 8-bit decoded)."""
        state = self.state[param]
        out: dict[str, torch.Tensor] = {}
        group = next(g for g in self.param_groups if any(q is param for q in g["params"]))
        for name, signed in self.STATE_NAMES.items():
            if f"{name}_q" in state:
                code = self.tables(signed, param.device).code
                out[name] = dequantize_blockwise(
                    state[f"{name}_q"], state[f"{name}_absmax"], code, block_size=group["block_size"]
                )
            elif name in state:
                out[name] = state[name].detach().clone().float()
        return out

    def export_fp32_state_dict(self) -> dict[str, Any]:
        """This optimizer's state in the torch.optim twin's format (fp32 states, decoded from 8-bit).

        Load it with ``torch.optim.Adam(...).load_state_dict`` (or SGD/AdamW) to continue in 32 bits.
        """
        sd = super().state_dict()
        index = {}
        for gi, group in enumerate(self.param_groups):
            for p, pid in zip(group["params"], sd["param_groups"][gi]["params"], strict=True):
                index[pid] = p
        state: dict[int, dict[str, Any]] = {}
        for pid, entry in sd["state"].items():
            p = index[pid]
            out: dict[str, Any] = dict(self.dequantized_state(p))
            if self.TORCH_STEP_IN_STATE:
                out["step"] = torch.tensor(float(entry["step"]), dtype=torch.float32)
            state[pid] = out
        groups = []
        for g in sd["param_groups"]:
            tg = {k: v for k, v in g.items() if k not in _EIGHT_BIT_KEYS}
            groups.append({**self.TORCH_GROUP_DEFAULTS, **tg})
        return {"state": state, "param_groups": groups}

    def import_fp32_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by the torch.optim twin, quantising it where this optimizer keeps 8 bits.

        The twin's hyperparameters replace ours (as ``load_state_dict`` does); block size, minimum 8-bit
        size and optim_bits stay ours. Raises :class:`UnsupportedOptimizerArgument` when the saved groups
        use an option we do not implement (e.g. ``amsgrad=True``).
        """
        name = type(self).__name__
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise OptimizerStateError(
                f"{name}: state has {len(saved_groups)} param groups, the optimizer {len(self.param_groups)}"
            )
        groups, state = [], {}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            flags = {k: saved.get(k) for k in self.TORCH_GROUP_DEFAULTS if k not in group}
            reject_unsupported(name, **{k: v for k, v in flags.items() if v != self.TORCH_GROUP_DEFAULTS[k]})
            ours = {k: v for k, v in saved.items() if k in group and k != "params"}
            ours.update({k: group[k] for k in _EIGHT_BIT_KEYS})
            ours["params"] = saved["params"]
            groups.append(ours)
            if len(saved["params"]) != len(group["params"]):
                raise OptimizerStateError(f"{name}: a param group's size differs from the saved state's")
            for pid, p in zip(saved["params"], group["params"], strict=True):
                entry = state_dict["state"].get(pid)
                if entry is None:
                    continue
                state[pid] = self._encode_fp32_entry(p, group, entry)
        self.load_state_dict(
            {
                "state": state,
                "param_groups": groups,
                STATE_KEY: {"format": STATE_FORMAT, "map_version": MAP_VERSION},
            }
        )

    def _encode_fp32_entry(
        self, p: torch.Tensor, group: dict[str, Any], entry: dict[str, Any]
    ) -> dict[str, Any]:
        """One parameter's torch.optim state converted to our layout (quantised if 8-bit)."""
        step = entry.get("step", 1 if entry else 0)
        out: dict[str, Any] = {"step": int(step.item() if torch.is_tensor(step) else step)}
        for state_name, signed in self.STATE_NAMES.items():
            value = entry.get(state_name)
            if value is None:
                raise OptimizerStateError(f"{type(self).__name__}: saved state lacks '{state_name}'")
            value = value.detach().to(p.device, torch.float32)
            if self.uses_8bit(p, group):
                code = self.tables(signed, p.device).code
                q, absmax = quantize_blockwise(value, code, group["block_size"])
                out[f"{state_name}_q"], out[f"{state_name}_absmax"] = q, absmax
            else:
                out[state_name] = value.to(p.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus the quantisation format (map version); groups hold block_size."""
        sd = super().state_dict()
        sd[STATE_KEY] = {"format": STATE_FORMAT, "map_version": MAP_VERSION}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by the same optimizer class; 8-bit states are restored bit for bit.

        Raises:
            OptimizerStateError: the state has no 8-bit format record, another map version, another
                block size, or 8-bit state tensors of the wrong dtype or size.
        """
        meta = state_dict.get(STATE_KEY)
        name = type(self).__name__
        if not isinstance(meta, dict):
            raise OptimizerStateError(
                f"{name}: optimizer state has no '{STATE_KEY}' record; it was not saved by a memsv 8-bit "
                "optimizer (convert torch.optim states with import_fp32_state_dict)"
            )
        if meta.get("format") != STATE_FORMAT or meta.get("map_version") != MAP_VERSION:
            raise OptimizerStateError(
                f"{name}: optimizer state has format {meta.get('format')} / map version "
                f"{meta.get('map_version')}, this memsv reads format {STATE_FORMAT} / "
                f"map version {MAP_VERSION}"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise OptimizerStateError(
                f"{name}: state has {len(saved_groups)} param groups, the optimizer {len(self.param_groups)}"
            )
        # torch.optim.Optimizer.load_state_dict casts every state tensor to the parameter's dtype, which
        # would turn uint8 codes into floats: keep the originals and put them back afterwards.
        originals: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            if saved.get("block_size") != group["block_size"]:
                raise OptimizerStateError(
                    f"{name}: state was saved with block_size={saved.get('block_size')}, "
                    f"the optimizer uses block_size={group['block_size']}"
                )
            if len(saved["params"]) != len(group["params"]):
                raise OptimizerStateError(f"{name}: a param group's size differs from the saved state's")
            for pid, param in zip(saved["params"], group["params"], strict=True):
                entry = state_dict["state"].get(pid)
                if entry is None:
                    continue
                quant = {k: v for k, v in entry.items() if k.endswith(("_q", "_absmax"))}
                self._check_quant_entry(param, quant, group["block_size"])
                originals[pid] = (param, quant)
        sd = {k: v for k, v in state_dict.items() if k != STATE_KEY}
        super().load_state_dict(sd)
        for param, quant in originals.values():
            for key, value in quant.items():
                self.state[param][key] = value.detach().to(param.device).clone()

    def _check_quant_entry(
        self, param: torch.Tensor, quant: dict[str, torch.Tensor], block_size: int
    ) -> None:
        nb = num_blocks(param.numel(), block_size)
        for key, value in quant.items():
            ok = (
                (value.dtype == torch.uint8 and value.numel() == param.numel())
                if key.endswith("_q")
                else (value.dtype == torch.float32 and value.numel() == nb)
            )
            if not ok:
                raise OptimizerStateError(
                    f"{type(self).__name__}: saved state '{key}' has dtype {value.dtype} and "
                    f"{value.numel()} elements, which does not fit a parameter of {param.numel()} elements"
                )


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by all state tensors of ``optimizer`` (any torch.optim optimizer, 8-bit or not).

    Counts ``numel * element_size`` of every tensor in ``optimizer.state`` (codes, absmax, fp32 states,
    step tensors); parameters, gradients and transient step buffers are not state.
    """
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


def _chunk_len(block_size: int) -> int:
    """Elements per chunk: whole blocks, at most CHUNK_ELEMENTS (one block if a block is larger)."""
    return max(1, CHUNK_ELEMENTS // block_size) * block_size


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of ``t`` (a contiguous copy for the rare non-contiguous tensor; copied back by caller)."""
    return t.view(-1) if t.is_contiguous() else t.contiguous().view(-1)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bits(value: Any) -> None:
    if value not in (8, 32) or isinstance(value, bool):
        raise ValueError(f"optim_bits must be 8 or 32, got {value!r}")
