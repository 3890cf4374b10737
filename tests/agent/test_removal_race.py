"""Docker's Remove and the control service's removal job can start the same
removal at once; `docker volume rm` must not answer before the volume is
fenced in the store (seen in CI: the second job answered at once, with no
root, and the store still held everything)."""
from __future__ import annotations

import pytest
import trio
import trio.testing

from agent.removal_jobs import RemovalAborted, RemovalRunner


class SlowFence(RemovalRunner):
    """The real job coordination; the store part replaced by a fencing that
    takes as long as the test says (the store is not what is tested here)."""

    def __init__(self, outcome: str | Exception) -> None:
        super().__init__("h1", "file:///nowhere", control=None, lock_for=lambda n: trio.Lock(),
                         in_use=lambda n: False)
        self.release = trio.Event()
        self.fenced = False
        self.outcome = outcome

    async def _fence(self, name: str) -> str:
        await self.release.wait()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        self.fenced = True
        return self.outcome

    async def _delete(self, name: str, root: str) -> None:
        await trio.sleep_forever()


async def test_a_second_job_answers_only_once_the_first_has_fenced(nursery):
    r = SlowFence("demo/root-1")
    answers: list[tuple[str | None, bool]] = []

    async def docker_remove() -> None:
        root = await nursery.start(r.job, "demo", None)
        answers.append((root, r.fenced))

    nursery.start_soon(nursery.start, r.job, "demo", None)      # the control service's job, first
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(docker_remove)                            # Docker's Remove, racing it
    await trio.testing.wait_all_tasks_blocked()
    assert answers == []                                         # not before the fencing
    r.release.set()
    with trio.fail_after(5):
        while not answers:
            await trio.sleep(0.01)
    assert answers == [("demo/root-1", True)]
    nursery.cancel_scope.cancel()


async def test_the_second_job_reports_the_first_ones_failure(nursery):
    r = SlowFence(OSError("store unreachable"))

    async def first() -> None:
        with pytest.raises(OSError):
            await nursery.start(r.job, "demo", None)

    nursery.start_soon(first)
    await trio.testing.wait_all_tasks_blocked()
    got: list[BaseException] = []

    async def second() -> None:
        try:
            await nursery.start(r.job, "demo", None)
        except BaseException as e:  # noqa: BLE001
            got.append(e)
    nursery.start_soon(second)
    await trio.testing.wait_all_tasks_blocked()
    r.release.set()
    with trio.fail_after(5):
        while not got:
            await trio.sleep(0.01)
    assert isinstance(got[0], RemovalAborted) and "store unreachable" in str(got[0])
