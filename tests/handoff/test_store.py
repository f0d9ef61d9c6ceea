"""The handoff state, the figures and the answer index against a real Redis, and their
in-memory twins held to the same behaviour."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from bot.engine.launcher import free_port
from bot.handoff.desk import Ticket
from bot.handoff.store import MemoryHandoffStore, RedisHandoffStore
from bot.ops.stats import MemoryAnswerIndex, MemoryStats, RedisAnswerIndex, RedisStats, day_of
from bot.turns import ConversationKey, Turn

KEY = ConversationKey("web", "shop", "visitor1")
OTHER = ConversationKey("discord", "42", "7", "9")


def prefix() -> str:
    return f"h{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["redis", "memory"])
def store(request, redis):
    if request.param == "memory":
        return MemoryHandoffStore()
    return RedisHandoffStore(redis, prefix=prefix(), ttl=3600)


@pytest.fixture(params=["redis", "memory"])
def stats(request, redis):
    if request.param == "memory":
        return MemoryStats()
    return RedisStats(redis, prefix=prefix(), conversation_ttl=3600)


def turn(key=KEY, *, event_id=None, user="U1", text="hi", command=None, reply_to=None) -> Turn:
    return Turn(
        platform=key.platform,
        tenant=key.tenant,
        channel=key.channel,
        thread=key.thread,
        user=user,
        text=text,
        event_id=event_id or uuid.uuid4().hex,
        command=command,
        reply_to=reply_to,
    )


async def test_a_ticket_is_open_until_closed_and_its_thread_still_leads_back(store):
    assert await store.ticket(KEY) is None
    ticket = Ticket(KEY, "slack", "CSUP:1.2", "visitor1", "request", address={"post_channel": "5"}, reply_to="m1")
    await store.open(ticket)
    assert await store.ticket(KEY) == ticket
    assert await store.ticket(OTHER) is None
    assert await store.by_thread("slack", "CSUP:1.2") == ticket
    assert await store.by_thread("slack", "CSUP:9.9") is None
    await store.close(KEY)
    assert await store.ticket(KEY) is None
    # The thread keeps its way back, so a late message there is recognised (and told it was resolved).
    assert (await store.by_thread("slack", "CSUP:1.2")).key == KEY


async def test_failures_count_in_a_row_per_conversation(store):
    assert [await store.failed(KEY) for _ in range(3)] == [1, 2, 3]
    assert await store.failed(OTHER) == 1
    await store.answered(KEY)
    assert await store.failed(KEY) == 1
    await store.open(Ticket(KEY, "slack", "CSUP:1.3", "u", "failures"))
    assert await store.failed(KEY) == 1  # a handoff starts the count again


async def test_redis_keys_carry_the_prefix_the_hash_tag_and_an_expiry(redis):
    p = prefix()
    store = RedisHandoffStore(redis, prefix=p, ttl=3600)
    await store.open(Ticket(KEY, "slack", "CSUP:1.4", "u", "anger"))
    await store.failed(OTHER)
    keys = {k.decode() for k in await redis.keys(f"{p}:*")}
    assert keys == {
        f"{p}:handoff:{OTHER.hash_tag}:failures",
        f"{p}:handoff:{KEY.hash_tag}",
        f"{p}:handoff:thread:slack:CSUP:1.4",
    }
    assert all(0 < ttl <= 3600 for ttl in [await redis.ttl(k) for k in keys])


def test_a_ticket_turns_desk_events_into_turns_of_the_customers_conversation():
    ticket = Ticket(OTHER, "slack", "CSUP:1.5", "cust", "request", address={"post_channel": "9"}, reply_to="m7")
    t = ticket.turn(command="agent", user="UAGENT", text="hello", event_id="Ev1", agent="Ann")
    assert t.key == OTHER and t.command == "agent" and t.reply_to == "m7" and t.user == "UAGENT"
    assert t.address == {"post_channel": "9"} and t.handle == {}
    assert (t.desk, t.desk_thread, t.agent) == ("slack", "CSUP:1.5", "Ann")
    assert Ticket.from_json(ticket.to_json()) == ticket


def test_a_ticket_or_turn_stored_by_the_previous_version_keeps_its_address_but_no_one_off_handle():
    """A rolling upgrade: tickets and inbox entries written with the single `meta` map."""
    old = Ticket(OTHER, "slack", "CSUP:1.5", "cust", "request", address={"post_channel": "9"}).to_json()
    old = old.replace('"address"', '"meta"')
    assert Ticket.from_json(old).address == {"post_channel": "9"}
    raw = {
        "platform": "discord",
        "tenant": "g",
        "channel": "c",
        "user": "u",
        "text": "hi",
        "event_id": "e",
        "meta": {"post_channel": "9", "interaction_token": "secret", "agent": "Ann", "desk": "slack"},
    }
    turn = Turn.from_dict(raw)
    assert turn.address == {"post_channel": "9"} and turn.handle == {"interaction_token": "secret"}
    assert (turn.agent, turn.desk) == ("Ann", "slack")


async def test_votes_need_a_known_answer_count_once_and_move_when_changed(stats):
    answered = turn(event_id="ans-1")
    await stats.answered(answered)
    assert await stats.vote(turn(user="U1"), "ans-404", "up") == "unknown"
    assert await stats.vote(turn(OTHER), "ans-1", "up") == "unknown"  # another conversation's answer
    assert await stats.vote(turn(user="U1"), "ans-1", "up") == "new"
    assert await stats.vote(turn(user="U1"), "ans-1", "up") == "same"
    assert await stats.vote(turn(user="U2"), "ans-1", "up") == "new"
    assert await stats.vote(turn(user="U1"), "ans-1", "down") == "changed"
    [day] = await stats.days(days=1)
    assert (day.tenant, day.day, day.answers, day.up, day.down) == ("shop", day_of(), 1, 1, 1)


async def test_daily_figures_per_tenant(stats):
    for n in range(3):
        await stats.answered(turn(ConversationKey("web", "shop", f"v{n}")))
    await stats.answered(turn(ConversationKey("web", "shop", "v0")))  # same conversation again
    await stats.handed_off(turn(ConversationKey("web", "shop", "v1")))
    await stats.handed_off(turn(ConversationKey("web", "shop", "v3")))  # handed off without an answer
    await stats.resolved(turn(ConversationKey("web", "shop", "v1")))
    await stats.answered(turn(OTHER))
    days = await stats.days(days=3)
    by_tenant = {d.tenant: d for d in days}
    assert sorted(by_tenant) == ["42", "shop"] and len(days) == 2  # empty days are left out
    shop = by_tenant["shop"]
    assert (shop.answers, shop.handoffs, shop.resolved, shop.conversations, shop.handed_conversations) == (
        4,
        2,
        1,
        4,
        2,
    )
    assert shop.without_human == 2 and shop.without_human_share == 0.5
    assert [d.tenant for d in await stats.days(days=3, tenant="42")] == ["42"]
    assert await stats.days(days=3, tenant="nobody") == []
    yesterday = datetime.now(UTC).date().replace(year=2000)
    assert await stats.days(days=1, today=yesterday) == []


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_the_answer_index_leads_from_a_message_to_its_answer(redis, kind):
    index = RedisAnswerIndex(redis, prefix=prefix(), ttl=3600) if kind == "redis" else MemoryAnswerIndex()
    answered = turn(OTHER, event_id="Ev42")
    await index.remember("1234", answered)
    found = await index.find("discord", "42", "1234")
    assert found is not None and (found.key, found.event_id) == (OTHER, "Ev42")
    assert await index.find("discord", "43", "1234") is None  # another guild
    assert await index.find("slack", "42", "1234") is None


async def test_counts_reach_redis_for_other_replicas_in_one_write_after_a_short_delay(redis):
    name = prefix()
    counting, other = (RedisStats(redis, prefix=name, conversation_ttl=3600) for _ in range(2))
    writes = []
    real_pipeline = redis.pipeline

    def pipeline(*args, **kwargs):
        writes.append(1)
        return real_pipeline(*args, **kwargs)

    redis.pipeline = pipeline
    try:
        for n in range(8):  # eight turns ending together
            await counting.answered(turn(ConversationKey("web", "shop", f"v{n}"), event_id=f"a{n}"))
        await counting.handed_off(turn(ConversationKey("web", "shop", "v0")))
        for _ in range(100):  # nobody in this process reads: the buffer is written on its own
            if writes:
                break
            await asyncio.sleep(0.05)
    finally:
        redis.pipeline = real_pipeline
    assert len(writes) == 1
    [day] = await other.days(days=1)
    assert (day.answers, day.handoffs, day.conversations, day.handed_conversations) == (8, 1, 8, 1)
    assert await other.vote(turn(ConversationKey("web", "shop", "v3"), user="U1"), "a3", "up") == "new"


async def test_figures_that_cannot_be_written_are_logged_and_never_fail_the_turn(caplog):
    down = Redis(port=free_port(), socket_connect_timeout=1)
    stats = RedisStats(down, prefix=prefix(), conversation_ttl=3600)
    await stats.answered(turn())  # buffered: the turn goes on
    with caplog.at_level(logging.WARNING, logger="bot.ops.stats"):
        await stats.aclose()
    assert "1 counts lost" in caplog.text
    await down.aclose()
