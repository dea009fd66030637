"""Running many coroutines with a bound on how many run at once (vLLM batches what is in flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def at_most(limit: int, awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await each of ``awaitables`` with at most ``limit`` running at once; results in the order given.

    Each runs whole inside its slot, so work it does after its request (saving a record) is bounded too.
    """
    slots = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with slots:
            return await awaitable

    return list(await asyncio.gather(*(one(a) for a in awaitables)))
