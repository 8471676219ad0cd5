"""The loopback Mosquitto lives in qkdtwin.testbed (the benchmarks use it too)."""

from qkdtwin.testbed.broker import ALLOW_ALL_ACL, TestBroker, free_port

__all__ = ["ALLOW_ALL_ACL", "TestBroker", "free_port"]
