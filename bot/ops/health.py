"""What is not working but need not stop Parley: the `Degraded` registry that /readyz reads.

An adapter's start-up has steps it cannot serve without (logging in) and steps it can
(registering Discord's slash commands: mentions and DMs work without them). A failed
optional step must never end `parley serve`: one platform's problem would take every
platform down. It is logged once with what fixes it, shown in /readyz, and tried again
with backoff until it succeeds. A limitation that only a restart can lift (a privileged
intent Discord withheld) is reported the same way, without the retries.

The composition root makes one `Degraded` (`Runtime.degraded`); each adapter is handed it
and the ops endpoint reads it. A problem does not make /readyz answer 503: the process
still serves, and taking it out of a load balancer would only stop what works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)

Attempt = Callable[[], Awaitable[object]]  # one try of an optional step; raises when it failed
Explain = Callable[[Exception], str]  # a failure as the line logged and shown: what failed, how to fix it


class Degraded:
    """The problems of the moment, by step name (`"discord:commands"`), each a line that says
    what failed and how to fix it."""

    def __init__(self) -> None:
        self._problems: dict[str, str] = {}

    def report(self, step: str, problem: str) -> None:
        self._problems[step] = problem

    def clear(self, step: str) -> None:
        self._problems.pop(step, None)

    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    @asynccontextmanager
    async def optional(
        self,
        step: str,
        attempt: Attempt,
        *,
        explain: Explain,
        first_delay: float,
        max_delay: float = 600.0,
    ) -> AsyncIterator[None]:
        """Run `attempt` in the background for the life of the block, again after each failure
        (waiting `first_delay`, doubling up to `max_delay`) until it succeeds; the block goes
        on meanwhile. `explain` turns a failure into the line logged and reported. The task
        is cancelled and awaited when the block ends."""
        task = asyncio.create_task(
            self._keep_trying(step, attempt, explain, first_delay, max_delay), name=f"optional-{step}"
        )
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _keep_trying(self, step: str, attempt: Attempt, explain: Explain, delay: float, max_delay: float) -> None:
        failures = 0
        while True:
            try:
                await attempt()
            except Exception as exc:  # any failure of an optional step: reported, never fatal
                failures += 1
                problem = explain(exc)
                if self._problems.get(step) != problem:  # once per distinct problem, not per retry
                    log.warning(
                        "%s failed: %s (Parley keeps serving; trying again in %g s, then backing off)",
                        step,
                        problem,
                        delay,
                    )
                log.debug("%s failed (attempt %s)", step, failures, exc_info=exc)
                self.report(step, problem)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
            else:
                if failures:
                    log.info("%s succeeded after %s failed attempts", step, failures)
                self.clear(step)
                return
