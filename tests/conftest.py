"""Fixtures shared by all test levels."""

from __future__ import annotations

import pytest

from tests.support.broker import TestBroker
from tests.support.deployed import (  # noqa: F401 (shared deployed labs)
    deployed_lab,
    deployed_star6,
    lab_group,
    lab_pool,
)
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


def pytest_collection_modifyitems(config, items) -> None:
    """Tests of each shared deployed lab run together, one lab after the other (the lab pool
    keeps one up at a time); the rest keep their order and run first."""
    items.sort(key=lambda item: lab_group(getattr(item, "fixturenames", ())))
