"""``train.precision: auto``: bfloat16 autocast where the device computes it natively, else fp32.

bf16 autocast (fp32 master weights and optimizer, as ``bf16``) halves the bytes of every activation, and
where the hardware has bf16 arithmetic it is faster too: on this project's 2-core Xeon (AMX) the demo's
width-8 Type I ResNet18 step takes ~0.73x its fp32 time (the vanilla one 0.56x). Without native bf16
the same autocast is emulated and much slower: ~2x the fp32 step on AVX-512 without BF16 and ~7x on
AVX2 (measured with oneDNN and ATen held to those instruction sets; docs/results.md, session 23). So
a config that wants the speed without the penalty (the demo's) says ``auto`` and the hardware decides;
``bf16`` is bf16 everywhere. The trainer resolves ``auto`` once, before anything is built, and writes
the concrete precision into config.yaml and every checkpoint.
"""

from __future__ import annotations

import torch

from memsv_cli.errors import MemsvError

# CPU features that give oneDNN bf16 arithmetic, strongest first: (name in the log, torch.cpu probe)
_CPU_BF16 = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))


def native_bf16(device: torch.device) -> str | None:
    """What makes ``device`` compute bfloat16 natively (e.g. ``"AMX"``), or None where it does not."""
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no emulation and no such argument
            native = torch.cuda.is_bf16_supported()
        if not native:
            return None
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA compute capability {major}.{minor}"
    if device.type == "cpu":
        for name, probe in _CPU_BF16:
            check = getattr(torch.cpu, probe, None)  # private probes: absent in some builds
            if check is not None and check():
                return name
    return None


def resolve_precision(choice: str, device: torch.device) -> tuple[str, str | None]:
    """``(precision, note)``: ``auto`` becomes ``bf16`` or ``fp32`` with a note saying why (for
    train.log); any other choice is returned as it is, with no note."""
    if choice != "auto":
        return choice, None
    reason = native_bf16(device)
    if reason is not None:
        return "bf16", f"train.precision auto: bf16 ({device.type} has native bf16: {reason})"
    return "fp32", f"train.precision auto: fp32 (no native bf16 on this {device.type})"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in (one line)."""
    if precision == "fp16" and device.type != "cuda":
        raise MemsvError("--precision fp16 needs CUDA; on CPU use bf16, fp32 or auto")
