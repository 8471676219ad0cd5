"""Fixtures shared by all test levels."""

from __future__ import annotations

import pytest

from tests.support.broker import TestBroker
from tests.support.deployed import deployed_lab  # noqa: F401 (one deployed lab per session)
from tests.support.pki import TestCA


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, test_ca):
    """A real Mosquitto with TLS and client certificates on loopback, allowing qkd/v1/#."""
    b = TestBroker(tmp_path / "broker", test_ca).start()
    yield b
    b.stop()
