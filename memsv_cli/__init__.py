"""memsv: memory-efficient training of deep speaker-embedding extractors (Liu & Qian, 2024).

Stages are library functions first (``memsv_cli.data``, ``memsv_cli.train``, ...); ``memsv_cli.cli``
only adapts command-line arguments to them.
"""

__version__ = "0.1.0"
