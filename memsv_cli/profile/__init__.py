"""Training-memory profiler behind ``memsv profile-memory`` (issue 7).

``tracker`` follows live tensor storages (CUDA's allocated bytes, on any device); ``fake`` runs steps on
data-less tensors; ``step`` is one training step (model, AAM head, optimizer); ``memory`` measures a step
by component (cpu / meta / cuda); ``fit`` finds the largest batch for a card; ``report`` compares with the
vanilla 32-bit baseline and renders the table or JSON.
"""

from memsv_cli.profile.fit import max_batch_size, parse_size
from memsv_cli.profile.memory import MemoryBreakdown, measure_step
from memsv_cli.profile.report import ProfileReport, profile_memory
from memsv_cli.profile.step import StepSetup, TrainingStep
from memsv_cli.profile.tracker import StorageTracker

__all__ = [
    "MemoryBreakdown",
    "ProfileReport",
    "StepSetup",
    "StorageTracker",
    "TrainingStep",
    "max_batch_size",
    "measure_step",
    "parse_size",
    "profile_memory",
]
