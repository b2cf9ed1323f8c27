"""Fake tensors for estimates: shapes, dtypes and strides without data, presenting as CPU tensors.

Torch's ``FakeTensorMode`` runs every op's shape function (meta kernel) instead of the kernel, so a step
of a model too big for this machine costs only the per-op dispatch. Fake tensors report device ``cpu``,
so CPU autocast (bf16) applies exactly as in a real CPU step. Two kinds of real tensors meet them:

- constants built as real tensors (the 8-bit quantiser tables), converted to fake on first use;
- real bookkeeping such as ``torch.get_rng_state()``, which the reversible models compare to decide
  whether a block's random state must be replayed: ops whose tensor inputs are all real run for real,
  because fake tensors cannot answer data-dependent questions.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _RealOpsPassthrough(TorchDispatchMode):
    """Runs ops whose tensor inputs are all real (not fake) outside the fake mode."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        tensors = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        if tensors and not any(isinstance(t, FakeTensor) for t in tensors):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_cpu() -> Iterator[None]:
    """Within the block, new tensors are fake CPU tensors (see the module docstring)."""
    with FakeTensorMode(allow_non_fake_inputs=True), _RealOpsPassthrough(), warnings.catch_warnings():
        # 8-bit kernels compare data pointers to spot copies; fake tensors warn about it, harmlessly.
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        yield


def real_tensors() -> contextlib.AbstractContextManager:
    """Within :func:`fake_cpu`, a block in which new tensors are real (a no-op outside it)."""
    return unset_fake_temporarily()
