"""The micro-batcher alone: what arrives together shares one call, a full queue is refused, errors reach callers."""

from __future__ import annotations

import asyncio
import threading

from xling.serving.batcher import MicroBatcher
from xling.state.errors import Overloaded


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_items_that_arrive_together_share_one_call_and_each_gets_its_own_result() -> None:
    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        calls.append(items)
        return [2 * i for i in items]

    async def scenario() -> list[int]:
        batcher = MicroBatcher(double, max_size=8, max_wait_s=0.05, max_queue=100)
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(5))))
        finally:
            await batcher.stop()

    assert run(scenario()) == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2, 3, 4]]


def test_a_batch_never_exceeds_max_size() -> None:
    sizes: list[int] = []

    def identity(items: list[int]) -> list[int]:
        return items

    async def scenario() -> list[int]:
        batcher = MicroBatcher(identity, max_size=3, max_wait_s=0.05, max_queue=100, on_batch=sizes.append)
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))
        finally:
            await batcher.stop()

    assert run(scenario()) == list(range(10))
    assert max(sizes) <= 3 and sum(sizes) == 10


def test_a_full_queue_answers_overloaded_instead_of_waiting() -> None:
    release = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def scenario() -> tuple[int, type[BaseException] | None]:
        batcher = MicroBatcher(blocked, max_size=1, max_wait_s=0.0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first item is taken: the function now blocks on it
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        refused: type[BaseException] | None = None
        try:
            await batcher.submit(3)
        except Overloaded as exc:
            refused = type(exc)
        release.set()
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return sum(results), refused

    assert run(scenario()) == (3, Overloaded)


def test_an_error_in_the_batch_reaches_every_caller_and_the_next_batch_runs() -> None:
    def fail_on_negative(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return items

    async def scenario() -> int:
        batcher = MicroBatcher(fail_on_negative, max_size=4, max_wait_s=0.02, max_queue=10)
        batcher.start()
        try:
            outcomes = await asyncio.gather(batcher.submit(-1), batcher.submit(1), return_exceptions=True)
            assert all(isinstance(o, ValueError) for o in outcomes), outcomes
            return await batcher.submit(7)
        finally:
            await batcher.stop()

    assert run(scenario()) == 7


def test_a_caller_that_gave_up_is_left_out_of_the_batch() -> None:
    seen: list[list[int]] = []

    def record(items: list[int]) -> list[int]:
        seen.append(items)
        return items

    async def scenario() -> int:
        batcher = MicroBatcher(record, max_size=4, max_wait_s=0.05, max_queue=10)
        batcher.start()
        try:
            abandoned = asyncio.ensure_future(batcher.submit(1))
            await asyncio.sleep(0)
            abandoned.cancel()
            return await batcher.submit(2)
        finally:
            await batcher.stop()

    assert run(scenario()) == 2
    assert [1] not in seen and all(1 not in batch for batch in seen)
