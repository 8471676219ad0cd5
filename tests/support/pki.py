"""The test CA lives in qkdtwin.testbed (the benchmarks use it too)."""

from qkdtwin.testbed.pki import Identity, TestCA

__all__ = ["Identity", "TestCA"]
