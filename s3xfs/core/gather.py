"""Run a few coroutines at once and fail like a plain call would.

trio wraps a nursery's failures in an ExceptionGroup; the filesystem catches client errors by type
(NotFound is ENOENT, PreconditionFailed is ESTALE, AccessDenied is EACCES), so a group would turn
every one of them into "unexpected error" and EIO. Here the first failure cancels the rest and is
raised as is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


async def gather(*jobs: Callable[[], Awaitable[object]]) -> None:
    """Run ``jobs`` concurrently; on the first exception cancel the others and raise it unwrapped."""
    failures: list[Exception] = []

    async def run(job: Callable[[], Awaitable[object]]) -> None:
        try:
            await job()
        except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
            failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    if failures:
        raise failures[0]
