import asyncio

import pytest

from bot.config import RedisSettings
from bot.dialogue.locks import KeyedLocks
from bot.dialogue.speculation import Ahead
from bot.errors import EngineUnavailable, InboxClosed, InboxFull
from bot.store.dedupe import MemoryDeduper, RedisDeduper
from bot.store.inbox import MemoryInbox
from bot.turns import ConversationKey, Turn


def turn(event_id="E1", tenant="T1", text="hi"):
    return Turn(platform="slack", tenant=tenant, channel="C1", user="U1", text=text, event_id=event_id)


async def test_redis_dedupe_claims_each_event_once_per_tenant(redis):
    deduper = RedisDeduper(redis, RedisSettings(_env_file=None, prefix="dd1"))
    assert await deduper.claim(turn("E1"))
    assert not await deduper.claim(turn("E1"))
    assert await deduper.claim(turn("E1", tenant="T2"))
    results = await asyncio.gather(*(deduper.claim(turn("E9")) for _ in range(20)))
    assert results.count(True) == 1


async def test_memory_dedupe_matches():
    deduper = MemoryDeduper(RedisSettings(_env_file=None))
    assert await deduper.claim(turn("E1"))
    assert not await deduper.claim(turn("E1"))


async def test_inbox_is_bounded_and_drains_after_close():
    inbox = MemoryInbox(maxsize=2)
    await inbox.put(turn("1"))
    await inbox.put(turn("2"))
    with pytest.raises(InboxFull):
        await inbox.put(turn("3"))
    await inbox.close()
    assert (await inbox.get()).turn.event_id == "1"
    assert (await inbox.get()).turn.event_id == "2"
    with pytest.raises(InboxClosed):
        await inbox.get()


async def test_keyed_locks_keep_one_conversation_in_order_and_others_concurrent():
    locks = KeyedLocks()
    events = []

    async def work(key, name, delay):
        async with locks.hold(key):
            events.append(("start", name))
            await asyncio.sleep(delay)
            events.append(("end", name))

    a, b = ConversationKey("x", "t", "a"), ConversationKey("x", "t", "b")
    await asyncio.gather(work(a, "a1", 0.05), work(a, "a2", 0), work(b, "b1", 0.01))
    assert events.index(("end", "a1")) < events.index(("start", "a2"))
    assert events.index(("start", "b1")) < events.index(("end", "a1"))
    assert len(locks) == 0


def test_output_hold_back_is_linear_and_holds_only_what_may_be_personal_data_in_progress():
    from bot.dialogue.guard import OUTPUT_HOLD, boundary

    assert boundary("hello world ") == len("hello world ")
    assert boundary("hello world") == len("hello ")  # the word being written may be an address's start
    assert boundary("write to john.doe") == len("write to ")
    assert boundary("done!") == len("done!")
    assert boundary("call me at +1 555 123") == len("call me at ")  # a phone number still coming
    assert boundary("write to john.doe@exa") == len("write to ")
    assert boundary("card 4111-1111-") == len("card ")
    long_number = "9" * (OUTPUT_HOLD + 1)
    assert boundary(long_number) == len(long_number)  # held no longer than OUTPUT_HOLD
    # This once sent a backtracking regex into exponential time (seconds per token).
    text = "a1" * 5000 + "!"
    assert boundary(text) == len(text)


async def test_a_stream_run_ahead_keeps_its_order_and_errors_and_can_be_dropped():
    closed = asyncio.Event()

    async def deltas(fail: bool = False):
        try:
            for piece in ("a", "b", "c"):
                yield piece
                await asyncio.sleep(0)
            if fail:
                raise EngineUnavailable("gone", url="http://engine")
            await asyncio.sleep(3600)  # a long answer still being generated
        finally:
            closed.set()

    ahead = Ahead(deltas(), asyncio.Event())
    got = []
    async for piece in ahead.deltas():
        got.append(piece)
        if len(got) == 3:
            break
    assert got == ["a", "b", "c"]
    await asyncio.wait_for(closed.wait(), 5)  # the reader stopped: the generator was closed too

    closed.clear()
    with pytest.raises(EngineUnavailable):
        [piece async for piece in Ahead(deltas(fail=True), asyncio.Event()).deltas()]

    closed.clear()
    dropped = Ahead(deltas(), asyncio.Event())
    await asyncio.sleep(0.01)
    await dropped.drop()  # routed elsewhere: never read
    assert closed.is_set()
