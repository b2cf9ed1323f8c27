"""What SGD8bit, Adam8bit and AdamW8bit share: state layout, chunking, state_dict checks.

State of a parameter trained with 8-bit state (``numel >= min_8bit_size`` and group ``optim_bits == 8``):
``{"step": int, "<name>_q": uint8 (param shape), "<name>_absmax": fp32 (ceil(numel / block_size),)}``
for each state ``<name>`` (``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``). Other parameters keep
torch.optim's fp32 layout ``{"step": int, "<name>": Tensor}``. ``state_dict()`` adds
``"memsv_8bit": {"format": 1, "map_version": MAP_VERSION}`` and every param group records its
``block_size``; ``load_state_dict`` refuses a state saved under another map version or block size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from memsv_cli.errors import MemsvError
from memsv_cli.optim.fused import CHUNK_ELEMENTS, QuantTables, Workspace
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

    Subclasses define ``STATE_NAMES`` (state name -> signed map?) and ``_update_group``.
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
        step = max(1, CHUNK_ELEMENTS // block_size) * block_size
        for start in range(0, numel, step):
            end = min(numel, start + step)
            yield start, end, start // block_size, num_blocks(end, block_size)

    def workspace_for(self, params: list[torch.Tensor], block_size: int) -> Workspace | None:
        """Work buffers big enough for the largest chunk among ``params`` (all on one device)."""
        if not params:
            return None
        chunk = max(1, CHUNK_ELEMENTS // block_size) * block_size
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

    def _update_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        raise NotImplementedError

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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bits(value: Any) -> None:
    if value not in (8, 32) or isinstance(value, bool):
        raise ValueError(f"optim_bits must be 8 or 32, got {value!r}")
