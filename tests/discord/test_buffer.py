"""The Discord adapter's retry buffer, as a unit: its `put` is a callable that refuses while "Redis is down".

The same buffer against a real Redis that is stopped and started again is in test_scenarios.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters.discord.buffer import RetryBuffer
from bot.config import DiscordSettings
from bot.errors import InboxUnavailable
from bot.turns import Turn


def turn(n: int) -> Turn:
    return Turn(platform="discord", tenant="1", channel="2", user="3", text=f"message {n}", event_id=str(n))


class Outage:
    """Where held turns go: refuses with InboxUnavailable while `down`, recording each attempt."""

    def __init__(self, *, down: bool = True) -> None:
        self.down = down
        self.attempts: list[str] = []
        self.taken: list[str] = []
        self.given_up: list[str] = []  # the turns whose users were told "try again" at shutdown
        self.pauses: list[float] = []  # each wait the buffer asked for, in order

    async def put(self, turn: Turn) -> None:
        self.attempts.append(turn.event_id)
        if self.down:
            raise InboxUnavailable("redis is down")
        self.taken.append(turn.event_id)

    async def give_up(self, turn: Turn) -> None:
        self.given_up.append(turn.event_id)

    async def sleep(self, seconds: float) -> None:
        """The buffer's clock: the wait is recorded, not spent, so no figure depends on the machine."""
        self.pauses.append(seconds)
        await asyncio.sleep(0)


async def wait_for(check, timeout: float = 20.0):
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_held_turns_go_in_in_order_with_doubling_backoff():
    outage = Outage()
    buffer = RetryBuffer(outage.put, give_up=outage.give_up, size=10, sleep=outage.sleep)
    async with buffer.running():
        assert all(buffer.hold(turn(n)) for n in range(3))
        await wait_for(lambda: len(outage.attempts) >= 4)
        outage.down = False
        await wait_for(lambda: len(outage.taken) == 3)
    assert outage.taken == ["0", "1", "2"]
    assert outage.attempts[:4] == ["0", "0", "0", "0"]  # the head is retried; nothing overtakes it
    assert outage.pauses[:4] == [0.2, 0.4, 0.8, 1.6]
    assert len(buffer) == 0


async def test_backoff_is_capped_and_starts_again_after_a_success():
    outage = Outage()
    buffer = RetryBuffer(
        outage.put, give_up=outage.give_up, size=10, first_delay=0.01, max_delay=0.08, sleep=outage.sleep
    )
    async with buffer.running():
        buffer.hold(turn(1))
        await wait_for(lambda: len(outage.attempts) >= 7)
        assert outage.pauses[:7] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.08]
        outage.down = False
        await wait_for(lambda: outage.taken == ["1"])
        outage.down = True
        before = len(outage.pauses)
        buffer.hold(turn(2))
        await wait_for(lambda: len(outage.pauses) > before)
        assert outage.pauses[before] == 0.01  # a success starts the backoff again


async def test_a_full_buffer_refuses_and_a_bad_turn_does_not_block_the_rest(caplog):
    outage = Outage()
    broken = {"1"}

    async def put(t: Turn) -> None:
        if t.event_id in broken:
            raise ValueError("cannot be serialised")
        await outage.put(t)

    buffer = RetryBuffer(put, give_up=outage.give_up, size=2, first_delay=0.01)
    async with buffer.running():
        assert buffer.hold(turn(1)) and buffer.hold(turn(2))
        assert not buffer.hold(turn(3)), "full: the caller tells the user"
        await wait_for(lambda: outage.attempts)
        outage.down = False
        await wait_for(lambda: outage.taken == ["2"])
    assert any("could not be put" in r.getMessage() for r in caplog.records)


async def test_what_is_still_held_at_shutdown_is_given_up_to_be_told_never_dropped_in_silence(caplog):
    caplog.set_level(logging.WARNING)
    outage = Outage()
    buffer = RetryBuffer(outage.put, give_up=outage.give_up, size=5, first_delay=0.01)
    async with buffer.running():
        buffer.hold(turn(1))
        buffer.hold(turn(2))
        await wait_for(lambda: outage.attempts)
    assert any("2 turns the inbox could not take are given up" in r.getMessage() for r in caplog.records)
    assert outage.taken == [] and outage.given_up == ["1", "2"]
    assert not buffer.hold(turn(3)), "after shutdown nothing is held: it could never be put"


async def test_at_shutdown_held_turns_get_a_last_try_before_they_are_given_up():
    outage = Outage()
    # Backing off for longer than the test: only the last try at shutdown can put them.
    buffer = RetryBuffer(outage.put, give_up=outage.give_up, size=5, first_delay=3600)
    async with buffer.running():
        buffer.hold(turn(1))
        buffer.hold(turn(2))
        outage.down = False  # the inbox is back, but the buffer is still waiting out its backoff
    assert outage.taken == ["1", "2"] and outage.given_up == []


def test_the_retry_buffer_setting_keeps_at_least_one_turn():
    assert DiscordSettings(_env_file=None).retry_buffer == 1000
    with pytest.raises(ValueError):
        DiscordSettings(_env_file=None, retry_buffer=0)
