"""Polling until a condition holds: the one `wait_for` of the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 10.0, what: str | None = None,
             step: float = 0.05) -> T:
    """Call `cond` every `step` seconds until it returns something truthy and return that.

    `cond` is asked once more when `timeout` has passed, so a slow last poll is not lost;
    then AssertionError names `what` (or `cond` itself) and the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what if what is not None else cond}")
        time.sleep(step)
