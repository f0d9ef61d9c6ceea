"""Quotas in the dialogue core (the real manager, a scripted engine, a real Redis): what is
refused, what the user reads, that nothing reaches the engine, and who is never limited."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from redis.asyncio import Redis

from bot import messages
from bot.config import QuotaSettings
from bot.dialogue.quota import QuotaGate, Quotas
from bot.dialogue.stages import TurnState
from bot.llm.client import CallScope
from bot.ops.metrics import Metrics
from bot.store.quota import RedisBuckets
from bot.tenants import TenantConfig, load_tenants
from bot.turns import Outcome, Turn
from tests.fakes.llm import Answer, FakeLLM
from tests.unit.test_dialogue_core import RecordingSink


def quota(**limits: Any) -> QuotaSettings:
    return QuotaSettings(_env_file=None, **limits)


def turn(
    text: str = "Tell me about the weather", *, user: str = "U1", channel: str = "C1", tenant: str = "T1", **fields: Any
) -> Turn:
    return Turn(
        platform="test",
        tenant=tenant,
        channel=channel,
        user=user,
        text=text,
        event_id=uuid.uuid4().hex,
        **fields,
    )


async def test_a_user_over_the_turn_rate_is_told_when_to_come_back_and_the_engine_is_not_asked(build):
    core = await build(FakeLLM(), quota=quota(user_turns_per_minute=2))
    assert (await core.handle(turn(), RecordingSink())).outcome is Outcome.ANSWERED
    assert (await core.handle(turn(), RecordingSink())).outcome is Outcome.ANSWERED
    sink = RecordingSink()
    reply = await core.handle(turn(), sink)
    assert reply.outcome is Outcome.OVER_QUOTA and reply.error == "user_turns_per_minute"
    assert sink.sent == [reply.text] and not sink.chunks  # one reply, nothing streamed
    assert "your limit of 2 messages a minute" in reply.text
    assert re.search(r"again in (\d+) seconds", reply.text)  # one turn back every 30 s
    assert len(core.llm.requests) == 2
    # Another user has a bucket of their own; the same user in another channel does not.
    assert (await core.handle(turn(user="U2"), RecordingSink())).outcome is Outcome.ANSWERED
    assert (await core.handle(turn(channel="C2"), RecordingSink())).outcome is Outcome.OVER_QUOTA


async def test_a_spent_token_quota_refuses_the_next_turn_with_its_reset_time(build):
    core = await build(
        FakeLLM([Answer(["A long answer."], completion_tokens=1010)]), quota=quota(user_tokens_per_hour=1000)
    )
    first = await core.handle(turn(), RecordingSink())
    assert first.outcome is Outcome.ANSWERED  # let through: the bucket was full
    [call] = core.llm.requests
    used = call.prompt_tokens + 1010  # more than the quota: the one turn's overspend
    sink = RecordingSink()
    reply = await core.handle(turn("And tomorrow?"), sink)
    assert reply.outcome is Outcome.OVER_QUOTA and reply.error == "user_tokens_per_hour"
    assert len(core.llm.requests) == 1  # nothing sent to the engine
    wait = (1 - (1000 - used)) * 3600 / 1000  # until the debt is repaid and one token is back
    assert reply.text == messages.over_quota("user", "tokens", "hour", 1000, wait)
    assert "you have used your limit of 1,000 tokens an hour" in reply.text and "again in 3 minutes" in reply.text
    assert sink.sent == [reply.text]
    # The refused turn is not in the conversation: the next prompt will not carry it.
    assert [m for _, m in await core.saved(turn())] == ["Tell me about the weather", "A long answer."]


async def test_a_turn_is_charged_what_it_used_not_what_it_reserved(build, redis):
    core = await build(FakeLLM([Answer(["Short."], completion_tokens=1)]), quota=quota(user_tokens_per_hour=1000))
    await core.handle(turn("Hi"), RecordingSink())
    [call] = core.llm.requests
    # The gate reserved the turn's estimate (system prompt, history, text and PARLEY_LLM_MAX_TOKENS);
    # the observer gave back what the engine did not use.
    key = f"{core.settings.redis.prefix}:quota:{{T1}}:user:U1:tokens_per_hour"
    level = float(await redis.hget(key, "level"))
    assert 1000 - (call.prompt_tokens + 1) <= level < 1000 - (call.prompt_tokens + 1) + 1  # (+1: refilled meanwhile)


async def test_channel_and_tenant_limits_count_everyone_in_them(build):
    core = await build(FakeLLM(), quota=quota(channel_turns_per_minute=2, tenant_turns_per_minute=3))
    assert (await core.handle(turn(user="U1"), RecordingSink())).outcome is Outcome.ANSWERED
    assert (await core.handle(turn(user="U2"), RecordingSink())).outcome is Outcome.ANSWERED
    channel = await core.handle(turn(user="U3"), RecordingSink())  # a third person, the same channel
    assert channel.outcome is Outcome.OVER_QUOTA and channel.error == "channel_turns_per_minute"
    assert "this channel's limit of 2 messages a minute" in channel.text
    assert (await core.handle(turn(user="U3", channel="C2"), RecordingSink())).outcome is Outcome.ANSWERED
    tenant = await core.handle(turn(user="U4", channel="C3"), RecordingSink())
    assert tenant.outcome is Outcome.OVER_QUOTA and tenant.error == "tenant_turns_per_minute"
    assert "this workspace's limit of 3 messages a minute" in tenant.text
    assert (await core.handle(turn(user="U4", channel="C3", tenant="T2"), RecordingSink())).outcome is Outcome.ANSWERED
    assert len(core.llm.requests) == 4


async def test_exempt_users_and_commands_are_never_refused(build):
    core = await build(FakeLLM(), quota=quota(user_turns_per_minute=1, exempt_users=["ADMIN"]))
    for _ in range(3):
        assert (await core.handle(turn(user="ADMIN"), RecordingSink())).outcome is Outcome.ANSWERED
    assert (await core.handle(turn(), RecordingSink())).outcome is Outcome.ANSWERED
    assert (await core.handle(turn(), RecordingSink())).outcome is Outcome.OVER_QUOTA
    # help comes before the gate: a user over quota can still read how the bot works.
    sink = RecordingSink()
    assert (await core.handle(turn("help", command="help"), sink)).outcome is Outcome.COMMAND
    assert sink.sent == [messages.HELP]


def test_exempt_users_from_the_environment(monkeypatch):
    assert quota().exempt_users == []
    monkeypatch.setenv("PARLEY_QUOTA_EXEMPT_USERS", " U1, U2 ,")
    assert QuotaSettings(_env_file=None).exempt_users == ["U1", "U2"]


async def test_a_tenant_sets_its_own_quota_in_the_tenants_file(build, tmp_path):
    file = tmp_path / "tenants.toml"
    file.write_text(
        "[default.quota]\nuser_turns_per_minute = 1\n"
        '[tenants."BIG".quota]\nuser_turns_per_minute = 3\n'
        '[tenants."FREE".quota]\nuser_turns_per_minute = 0\n'
    )
    tenants = load_tenants(file)
    assert tenants.get("BIG").quota.user_turns_per_minute == 3
    core = await build(FakeLLM(), tenants=tenants, quota=quota(user_turns_per_minute=5))
    outcomes = {
        t: [(await core.handle(turn(tenant=t), RecordingSink())).outcome for _ in range(4)]
        for t in ("T1", "BIG", "FREE")
    }
    assert outcomes["T1"].count(Outcome.ANSWERED) == 1  # [default] replaces the setting
    assert outcomes["BIG"].count(Outcome.ANSWERED) == 3
    assert outcomes["FREE"].count(Outcome.ANSWERED) == 4  # 0: no limit


async def test_two_replicas_on_one_redis_overspend_by_one_turn_at_most(build):
    """Two dialogue cores (replicas) share one Redis and one tenant quota; turns of many users
    arrive on both at once and overlap in the engine. What they use together stays within the
    quota plus one turn: every check sees the reservations of the turns still running."""
    limit = 400
    answer = Answer(["Some ", "answer."], completion_tokens=10, delay=0.05)  # within PARLEY_LLM_MAX_TOKENS (12)
    cores = [await build(FakeLLM(lambda _: answer), quota=quota(tenant_tokens_per_hour=limit)) for _ in range(2)]
    turns = [(core, turn(f"Question number {n}", user=f"U{n}", channel=f"C{n}")) for n in range(12) for core in cores]
    replies = await asyncio.gather(*(core.handle(t, RecordingSink()) for core, t in turns))
    answered = [r for r in replies if r.outcome is Outcome.ANSWERED]
    refused = [r for r in replies if r.outcome is Outcome.OVER_QUOTA]
    assert len(answered) + len(refused) == len(replies) and answered and refused
    spent = [r.prompt_tokens + r.completion_tokens for r in answered]
    assert sum(spent) <= limit + max(spent) + 1  # (+1: what the bucket refilled meanwhile, at 400 an hour)
    assert sum(len(c.llm.requests) for c in cores) == len(answered)


async def test_redis_failing_at_the_check_lets_the_turn_go_on(redis_to_stop):
    """Fail-open: a quota check Redis cannot answer is logged and counted, and the turn goes on."""
    client = Redis.from_url(redis_to_stop.url, socket_timeout=1, socket_connect_timeout=1)
    metrics = Metrics()
    try:
        quotas = Quotas(
            quota(user_turns_per_minute=1), RedisBuckets(client, prefix="q"), max_tokens=12, system_prompt=""
        )

        def state() -> TurnState:
            return TurnState(turn(), RecordingSink(), CallScope(), TenantConfig())

        gate = QuotaGate(quotas, metrics)
        assert await gate(state()) is None
        refused = await gate(state())
        assert refused is not None and refused.outcome is Outcome.OVER_QUOTA
        redis_to_stop.stop()
        assert await gate(state()) is None and await gate(state()) is None  # let through, unchecked
        assert metrics.quota_unavailable._value.get() == 2
        assert b"parley_quota_unavailable_total 2.0" in metrics.render()
    finally:
        await client.aclose()
