"""The stand-in control plane lives in qkdtwin.testbed (the benchmarks use it too)."""

from qkdtwin.testbed.fake_control import FakeControl

__all__ = ["FakeControl"]
