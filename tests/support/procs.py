"""Process clean-up lives in qkdtwin.testbed (the benchmarks use it too)."""

from qkdtwin.testbed.procs import terminate_all

__all__ = ["terminate_all"]
