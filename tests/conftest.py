"""Shared pytest set-up: CPU only, deterministic, one intra-op thread (CI has 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


#: the files that take longest (minutes of subprocesses on 2 cores): under ``make test``'s pytest-xdist
#: ``--dist loadfile`` each file runs on one worker, so starting these first keeps one from running
#: alone at the end
HEAVY_FILES = ("test_recipe.py", "test_train_survival.py", "test_profile_memory.py", "test_memory_plan.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the heavy files first, keeping every other order as collected (a stable sort)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return HEAVY_FILES.index(name) if name in HEAVY_FILES else len(HEAVY_FILES)

    items.sort(key=rank)
