"""Polling for the tests that drive real daemons."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from node.demo import wait_until


def wait_for(
    cond: Callable[[], bool],
    timeout: float,
    what: str,
    step: float = 0.1,
    errors: tuple[type[Exception], ...] = (httpx.HTTPError,),
) -> float:
    """Seconds until `cond()` held; an AssertionError naming `what` on timeout."""
    took = wait_until(cond, timeout, step, errors)
    if took is None:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return took
