"""Waiting on a condition a user would see, never on a fixed sleep."""

import time


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.2, describe=None):
    """The first truthy value of `predicate()`, polled every `interval` s; fails after `timeout` s,
    saying `describe()` when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f}s" + (f": {describe()}" if describe else ""))
