"""The deadline clock behind ``within_deadline``: one loop timer for every call's deadline,
with ``asyncio.timeout``'s semantics (on asyncio's own loop and on uvloop)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from asgi_micro import errors
from asgi_micro.context import Context, within_deadline
from asgi_micro.deadlines import Deadlines

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine to completion on a new loop of the kind the parameter names."""

    def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(coroutine)

    return run


def within(seconds: float, awaitable: Awaitable[Any]) -> Coroutine[Any, Any, Any]:
    return within_deadline(Context(deadline=time.monotonic() + seconds), awaitable)


def test_a_deadline_that_passes_ends_the_call_with_408_on_time(run: Any) -> None:
    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(errors.Timeout, match="deadline exceeded"):
            await within(0.05, asyncio.sleep(5))
        return time.monotonic() - started

    assert 0.04 <= run(main()) < 1.0


def test_calls_ending_in_any_order_each_keep_their_own_deadline(run: Any) -> None:
    """Deadlines that come later and earlier than the one the timer is armed for: each call
    times out at its own, and none that ends in time is touched."""

    async def main() -> dict[str, str]:
        outcome: dict[str, str] = {}

        async def call(name: str, deadline: float, takes: float) -> None:
            started = time.monotonic()
            try:
                await within(deadline, asyncio.sleep(takes))
                outcome[name] = "done"
            except errors.Timeout:
                late = time.monotonic() - started - deadline
                outcome[name] = "timeout" if -0.01 <= late < 0.5 else f"timeout {late:+.3f}s off"

        await asyncio.gather(
            call("late deadline, slow", 0.30, 5),
            call("early deadline, slow", 0.05, 5),  # earlier than the armed timer: re-armed
            call("middle deadline, quick", 0.20, 0.01),
            call("middle deadline, slow", 0.15, 5),
        )
        return outcome

    assert run(main()) == {
        "late deadline, slow": "timeout",
        "early deadline, slow": "timeout",
        "middle deadline, quick": "done",
        "middle deadline, slow": "timeout",
    }


def test_a_cancellation_from_elsewhere_stays_a_cancellation(run: Any) -> None:
    async def main() -> None:
        task = asyncio.create_task(within(5, asyncio.sleep(5)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # Cancelled from elsewhere first, the deadline passing during its clean-up: still a
        # cancellation (as with asyncio.timeout), not a 408.
        async def cleans_up_slowly() -> None:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(5)  # the deadline ends this
                raise

        both = asyncio.create_task(within(0.05, cleans_up_slowly()))
        await asyncio.sleep(0.01)
        both.cancel()
        with pytest.raises(asyncio.CancelledError):
            await both

    run(main())


def test_the_handlers_own_timeouts_and_errors_pass_through(run: Any) -> None:
    async def own_timeout() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)

    async def raises() -> None:
        raise KeyError("x")

    async def main() -> None:
        with pytest.raises(TimeoutError):  # the handler's own asyncio.timeout, not a 408
            await within(5, own_timeout())
        with pytest.raises(KeyError):
            await within(5, raises())
        assert await within(5, asyncio.sleep(0, result=7)) == 7

    run(main())


def test_nested_deadlines_the_inner_earlier_or_later(run: Any) -> None:
    async def main() -> None:
        # The inner deadline passes first: the inner block ends with 408 and the outer goes on.
        async def inner_first() -> str:
            with pytest.raises(errors.Timeout):
                await within(0.02, asyncio.sleep(5))
            return "outer goes on"

        assert await within(5, inner_first()) == "outer goes on"

        # The outer passes first: the 408 is the outer's, and the task is not left cancelling.
        async def outer_first() -> None:
            await within(5, asyncio.sleep(5))

        with pytest.raises(errors.Timeout):
            await within(0.02, outer_first())
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0

    run(main())


def test_ended_calls_leave_nothing_behind(run: Any) -> None:
    async def main() -> tuple[int, int]:
        deadlines = Deadlines.of_running_loop()
        for _ in range(5_000):
            await within(30, asyncio.sleep(0))
        await asyncio.gather(*(within(30, asyncio.sleep(0.001)) for _ in range(100)))
        with pytest.raises(errors.Timeout):
            await within(0.01, asyncio.sleep(1))
        return len(deadlines), len(deadlines._heap)

    running, kept = run(main())
    assert running == 0
    assert kept <= 256 + 100  # compacted as it went: not 5,100 entries


def test_one_clock_per_loop_and_thread() -> None:
    clocks: list[Deadlines] = []

    async def clock() -> None:
        clocks.append(Deadlines.of_running_loop())
        clocks.append(Deadlines.of_running_loop())

    asyncio.run(clock())
    asyncio.run(clock())
    thread = threading.Thread(target=asyncio.run, args=(clock(),))
    thread.start()
    thread.join()
    assert clocks[0] is clocks[1]
    assert clocks[2] is clocks[3]
    assert clocks[4] is clocks[5]
    assert clocks[2] is not clocks[0]
    assert clocks[4] is not clocks[2]
