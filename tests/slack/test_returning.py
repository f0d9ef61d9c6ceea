"""A returning user is answered: the inbox's numbering of a conversation can start again (its
keys expired, the shards were re-cut, a failover lost writes) while the context still
remembers the conversation, and no turn may then be taken for one already answered.

Through `parley serve`'s real path: slack-bolt against the fake Slack, the Redis Streams
inbox, the dialogue manager, and a scripted engine stand-in (the engine tier tests the LLM
client against vLLM; here only the layers above it matter).
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tests.slack.fake import message
from tests.standin import ScriptedEngine

ANSWER = "Here is what I know."


@pytest.fixture
async def standin():
    engine = ScriptedEngine(ANSWER)
    async with engine.serving() as url:
        yield url


async def three_turns(stack, fake_slack, first: int) -> None:
    for n in range(first, first + 3):
        await stack.deliver(message("D0042", f"question {n}", channel_type="im"))
        await stack.answered("D0042", turns=n, timeout=60)


async def test_a_dm_resumed_after_the_dedupe_ttl_is_answered(stack_for, fake_slack, standin, make_settings):
    # Event ids are remembered for a second: the pause below outlives them (and, before the
    # fix, the conversation's turn counter, which expired with them).
    redis = make_settings().redis.model_copy(update={"dedupe_ttl": 1})
    async with stack_for(standin, redis=redis) as stack:
        await three_turns(stack, fake_slack, 1)
        await asyncio.sleep(2.5)
        await three_turns(stack, fake_slack, 4)
        context = await stack.context("D0042")
        assert [m.content for m in context.messages if m.role == "user"] == [f"question {n}" for n in range(1, 7)]
        assert [p.text for p in fake_slack.in_thread("D0042", None)] == [ANSWER] * 6


async def test_turns_are_answered_when_the_inbox_loses_its_counters(stack_for, fake_slack, standin, redis_server):
    async with stack_for(standin) as stack:
        await three_turns(stack, fake_slack, 1)
        # What a failover to a replica that lost writes, or a new shard count, does: the
        # conversation's numbering starts again while its context stays.
        prefix = stack.runtime.settings.redis.prefix
        async with Redis.from_url(redis_server.url) as redis:
            counters = [key async for key in redis.scan_iter(f"{prefix}:inbox:*") if await redis.type(key) != b"stream"]
            assert counters
            await redis.delete(*counters)
        await three_turns(stack, fake_slack, 4)
        assert [p.text for p in fake_slack.in_thread("D0042", None)] == [ANSWER] * 6


async def test_a_platform_retry_is_still_a_duplicate_after_the_counters_start_again(
    stack_for, fake_slack, standin, redis_server
):
    async with stack_for(standin) as stack:
        event = message("D0042", "question 1", channel_type="im")
        body, _ = await stack.deliver(event)
        await stack.answered("D0042", turns=1, timeout=60)
        prefix = stack.runtime.settings.redis.prefix
        async with Redis.from_url(redis_server.url) as redis:
            counters = [key async for key in redis.scan_iter(f"{prefix}:inbox:*") if await redis.type(key) != b"stream"]
            await redis.delete(*counters)
        # Slack redelivers the same event (same event id) after the numbering started again.
        await stack.send(body, retry_num=1)
        await stack.deliver(message("D0042", "question 2", channel_type="im"))
        context = await stack.answered("D0042", turns=2, timeout=60)
        assert [m.content for m in context.messages if m.role == "user"] == ["question 1", "question 2"]
        assert len(fake_slack.in_thread("D0042", None)) == 2
