"""The stand-in QKD module lives in qkdtwin.testbed (the benchmarks use it too)."""

from qkdtwin.testbed.fake_qkd_module import FakeQkdModule, module_pair

__all__ = ["FakeQkdModule", "module_pair"]
