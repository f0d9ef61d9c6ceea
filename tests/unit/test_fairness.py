"""The engine's fair queue (`bot.llm.fairness.FairSlots`): round-robin across shares, each
share's own order kept, cancellation never leaking or losing a slot."""

from __future__ import annotations

import asyncio

from bot.llm.fairness import FairSlots


async def _grants(slots: FairSlots, asks: list[str]) -> list[str]:
    """The order in which `asks` (shares, asked in this order while every slot is taken) get a
    slot, each holder releasing at once."""
    order: list[str] = []
    blocker = asyncio.Event()

    async def hold_first() -> None:
        async with slots.hold("first"):
            await blocker.wait()

    async def ask(i: int, share: str) -> None:
        async with slots.hold(share):
            order.append(f"{share}{i}")

    first = asyncio.create_task(hold_first())
    await asyncio.sleep(0)
    assert slots.locked()
    tasks = [asyncio.create_task(ask(i, share)) for i, share in enumerate(asks)]
    await asyncio.sleep(0)
    assert slots.waiting() == len(asks)
    blocker.set()
    await asyncio.gather(first, *tasks)
    assert not slots.locked() and slots.waiting() == 0
    return order


async def test_a_heavy_share_takes_turns_with_the_light_ones():
    asks = ["heavy"] * 6 + ["light"] + ["other"] + ["heavy"] * 2 + ["light"]
    order = await _grants(FairSlots(1), asks)
    # The heavy share asked first and gets the first slot, then every share in turn.
    assert order == ["heavy0", "light6", "other7", "heavy1", "light10", "heavy2", "heavy3", "heavy4", "heavy5",
                     "heavy8", "heavy9"]  # fmt: skip


async def test_one_share_is_first_come_first_served():
    assert await _grants(FairSlots(1), ["x"] * 5) == ["x0", "x1", "x2", "x3", "x4"]


async def test_nothing_waits_while_slots_are_free():
    slots = FairSlots(2)
    async with slots.hold("a"):
        assert not slots.locked()
        async with slots.hold("a"):
            assert slots.locked()
    assert not slots.locked()


async def test_a_cancelled_waiter_leaves_its_place_and_the_slot_goes_on():
    slots = FairSlots(1)
    got: list[str] = []

    async def ask(share: str) -> None:
        async with slots.hold(share):
            got.append(share)

    async with slots.hold("holder"):
        gone = asyncio.create_task(ask("gone"))
        kept = asyncio.create_task(ask("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert slots.waiting() == 1
    await kept
    assert got == ["kept"] and gone.cancelled()
    assert not slots.locked()


async def _two_waiting(slots: FairSlots, got: list[str]) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    async def ask(share: str) -> None:
        async with slots.hold(share):
            got.append(share)

    first = asyncio.create_task(ask("first"))
    then = asyncio.create_task(ask("then"))
    await asyncio.sleep(0)
    assert slots.waiting() == 2
    return first, then


async def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on():
    slots = FairSlots(1)
    got: list[str] = []
    holder = slots.hold("holder")
    await holder.__aenter__()
    first, then = await _two_waiting(slots, got)
    await holder.__aexit__(None, None, None)  # grants "first" its slot; its task has not run yet
    first.cancel()
    async with asyncio.timeout(5):  # a lost slot would leave "then" waiting for ever
        await asyncio.gather(first, then, return_exceptions=True)
    assert got == ["then"] and first.cancelled()
    assert not slots.locked()


async def test_a_waiter_cancelled_before_the_release_is_passed_over():
    slots = FairSlots(1)
    got: list[str] = []
    holder = slots.hold("holder")
    await holder.__aenter__()
    first, then = await _two_waiting(slots, got)
    first.cancel()  # its future is cancelled now; its task cleans up later
    await holder.__aexit__(None, None, None)
    async with asyncio.timeout(5):  # a lost slot would leave "then" waiting for ever
        await asyncio.gather(first, then, return_exceptions=True)
    assert got == ["then"] and first.cancelled()
    assert not slots.locked() and slots.waiting() == 0
