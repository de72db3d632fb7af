"""Micro-batching: requests arriving within a short window share one call of a blocking function."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from xling.state.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Collects up to `max_size` items or `max_wait_s`, then runs `fn(items)` on one worker thread.

    While a batch runs, new items queue up and form the next batch, so batches grow with load.
    A full queue answers `Overloaded` (429) instead of growing latency and memory without bound.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        *,
        max_size: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
        name: str = "batcher",
    ) -> None:
        self._fn = fn
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded("too many queued requests; retry shortly") from None
        return await future

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_size:
            # Take what is already queued without waiting; then wait out the window.
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # callers that gave up are skipped
            if not live:
                continue
            if self._on_batch is not None:
                self._on_batch(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [item for item, _ in live])
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
