"""Model zoo: thin ResNets and DF-ResNets, each vanilla, Type I (``rev_``) and Type II (``fullrev_``).

Contract (DESIGN.md): ``get_model(name, feat_dim=80, embed_dim=256, base_width=32, **kwargs)`` returns
an ``nn.Module`` mapping ``(batch, frames, feat_dim)`` float features to ``(batch, embed_dim)``
embeddings; ``list_models()`` lists the names.
"""

from __future__ import annotations

import torch
from torch import nn

from memsv_cli.errors import MemsvError
from memsv_cli.models.activation_bytes import saved_activation_bytes
from memsv_cli.models.backbone import SpeakerNet
from memsv_cli.models.dfresnet import DFRESNET_CONFIGS, dfresnet_parts
from memsv_cli.models.resnet import RESNET_CONFIGS, resnet_parts
from memsv_cli.models.reversible import (
    ReversibleChain,
    chain_reconstruction_error,
    frozen_batchnorm_stats,
)

__all__ = [
    "REVERSIBLE_PREFIXES",
    "VARIANT_PREFIXES",
    "SpeakerNet",
    "get_model",
    "list_models",
    "model_summary",
    "parse_model_name",
    "reconstruction_error",
    "saved_activation_bytes",
    "vanilla_name",
]

#: name prefix -> variant (``backbone.VARIANTS``), in :func:`list_models` order
VARIANT_PREFIXES: dict[str, str] = {"": "vanilla", "rev_": "rev", "fullrev_": "fullrev"}
#: the prefixes of the reversible variants: ``rev_`` (Type I), ``fullrev_`` (Type II)
REVERSIBLE_PREFIXES: tuple[str, ...] = tuple(p for p in VARIANT_PREFIXES if p)


def _base_names() -> list[str]:
    return [f"resnet{d}" for d in RESNET_CONFIGS] + [f"dfresnet{d}" for d in DFRESNET_CONFIGS]


def list_models() -> list[str]:
    """All model names: vanilla ones, then the ``rev_`` (Type I), then the ``fullrev_`` (Type II)."""
    return [prefix + base for prefix in VARIANT_PREFIXES for base in _base_names()]


def vanilla_name(name: str) -> str:
    """The plain model a reversible one is built from: ``fullrev_resnet293`` -> ``resnet293``; other
    names unchanged (the name is not checked)."""
    for prefix in REVERSIBLE_PREFIXES:
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def parse_model_name(name: str) -> tuple[str, str, int]:
    """``"fullrev_resnet34" -> ("fullrev", "resnet", 34)``; MemsvError listing valid names otherwise."""
    if name not in list_models():
        raise MemsvError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    base = vanilla_name(name)
    family = "dfresnet" if base.startswith("dfresnet") else "resnet"
    return VARIANT_PREFIXES[name.removesuffix(base)], family, int(base[len(family) :])


def get_model(
    name: str, feat_dim: int = 80, embed_dim: int = 256, base_width: int = 32, **kwargs: object
) -> nn.Module:
    """Build a model by name.

    Args:
        name: one of :func:`list_models`.
        feat_dim: fbank dimensions (input ``(batch, frames, feat_dim)``).
        embed_dim: embedding size (output ``(batch, embed_dim)``).
        base_width: width of the first stage; all widths scale with it (32 -> 32/64/128/256 for the
            ResNets, 32/32/64/128/256 for the DF-ResNets). Tests use 4-16.
        reversible_backward (rev_/fullrev_ only, default True): False computes the identical function
            with plain autograd (caching every activation), for checks and debugging.
        recompute_chunks (rev_/fullrev_ only, default 1): K > 1 recomputes the reversible steps and
            recomputed layers with the largest feature maps over K micro-batches in backward, smaller
            maps over proportionally fewer (``backbone.scaled_chunks``): exact gradients, lower peak
            memory, more time (docs/design.md).
        checkpoint_blocks (vanilla only, default False): activation checkpointing
            (``torch.utils.checkpoint``) around each residual block in training: the usual way to save
            activation memory, the baseline the reversible models are compared with
            (:mod:`memsv_cli.models.checkpointed`).
    Raises:
        MemsvError: unknown name, bad sizes, or an argument this model does not take.
    """
    variant, family, depth = parse_model_name(name)
    reversible_backward = kwargs.pop("reversible_backward", True)
    if variant == "vanilla" and reversible_backward is not True:
        raise MemsvError(f"{name}: reversible_backward applies only to rev_/fullrev_ models")
    chunks = kwargs.pop("recompute_chunks", 1)
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise MemsvError(f"{name}: recompute_chunks must be a positive integer, got {chunks!r}")
    if variant == "vanilla" and chunks != 1:
        raise MemsvError(f"{name}: recompute_chunks applies only to rev_/fullrev_ models")
    checkpoint_blocks = kwargs.pop("checkpoint_blocks", False)
    if not isinstance(checkpoint_blocks, bool) or (checkpoint_blocks and variant != "vanilla"):
        raise MemsvError(f"{name}: checkpoint_blocks (true/false) applies only to vanilla models")
    if kwargs:
        raise MemsvError(f"{name}: unexpected model argument(s): {', '.join(sorted(kwargs))}")
    for key, value in (("feat_dim", feat_dim), ("embed_dim", embed_dim), ("base_width", base_width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MemsvError(f"{name}: {key} must be a positive integer, got {value!r}")
    parts = resnet_parts if family == "resnet" else dfresnet_parts
    stem, units = parts(depth, base_width)
    return SpeakerNet(
        stem,
        units,
        base_width,
        feat_dim,
        embed_dim,
        variant,
        reversible_backward=bool(reversible_backward),
        recompute_chunks=chunks,
        checkpoint_blocks=checkpoint_blocks,
    )


def model_summary(name: str, **kwargs: object) -> dict[str, object]:
    """``{"name", "variant", "family", "depth", "params"}`` of ``get_model(name, **kwargs)``; build it
    under ``torch.device("meta")`` to count without allocating."""
    variant, family, depth = parse_model_name(name)
    params = sum(p.numel() for p in get_model(name, **kwargs).parameters())
    return {"name": name, "variant": variant, "family": family, "depth": depth, "params": params}


def reconstruction_error(model: nn.Module, feats: torch.Tensor) -> float:
    """Largest relative error of the block inputs rebuilt by the reversible backward.

    Runs one no-grad forward of ``model`` on ``feats`` (``(batch, frames, feat_dim)``) in the model's
    current mode, capturing the input of each reversible chain, then rebuilds every step's input from
    the chain output backwards and compares it with the true input (Frobenius norm ratio). BatchNorm
    running statistics are not changed. Returns 0.0 for a model without reversible parts.
    """
    chains = [m for m in model.modules() if isinstance(m, ReversibleChain)]
    if not chains:
        return 0.0
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def grab(module: nn.Module, args: tuple) -> None:
        captured[id(module)] = (args[0].detach(), args[1].detach())

    handles = [c.register_forward_pre_hook(grab) for c in chains]
    try:
        with torch.no_grad(), frozen_batchnorm_stats(model):
            model(feats)
    finally:
        for h in handles:
            h.remove()
    return max(chain_reconstruction_error(c, *captured[id(c)]) for c in chains)
