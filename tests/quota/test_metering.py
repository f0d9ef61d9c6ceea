"""The usage meter and the per-tenant token counter, filled by real turns of the dialogue core."""

from __future__ import annotations

import uuid
from typing import Any

from bot.config import QuotaSettings
from bot.ops.meter import MemoryMeter, Spent
from bot.ops.stats import day_of
from bot.tools.report import run_report
from bot.turns import Outcome, Turn
from tests.fakes.llm import Answer, FakeLLM
from tests.unit.test_dialogue_core import RecordingSink


def turn(text: str = "How do I reset my password?", *, user: str = "U1", channel: str = "C1", **fields: Any) -> Turn:
    return Turn(
        platform="test", tenant="T1", channel=channel, user=user, text=text, **{"event_id": uuid.uuid4().hex, **fields}
    )


async def test_every_turn_is_metered_per_user_channel_and_tenant(build, redis, make_settings):
    quota = QuotaSettings(_env_file=None, user_turns_per_minute=2)
    core = await build(FakeLLM(lambda _: Answer(["Use ", "the link."], completion_tokens=5)), quota=quota)
    replies = [
        await core.handle(turn(), RecordingSink()),
        await core.handle(turn(channel="C2"), RecordingSink()),
        await core.handle(turn(channel="C2"), RecordingSink()),  # over the user's 2 a minute
        await core.handle(turn(user="U2", channel="C2"), RecordingSink()),
    ]
    assert [r.outcome for r in replies] == [Outcome.ANSWERED] * 2 + [Outcome.OVER_QUOTA, Outcome.ANSWERED]
    duplicate = turn(user="U2", event_id="again")
    await core.handle(duplicate, RecordingSink())
    await core.handle(duplicate, RecordingSink())  # a platform retry: not a turn of its own

    calls = core.llm.requests
    assert len(calls) == 4
    by_user = {r.who: r for r in await core.meter.rows(scope="user", days=1)}
    u1, u2 = by_user["U1"], by_user["U2"]
    assert (u1.turns, u1.refused, u1.completion) == (2, 1, 10)
    assert u1.prompt == calls[0].prompt_tokens + calls[1].prompt_tokens
    assert (u2.turns, u2.refused, u2.prompt) == (2, 0, calls[2].prompt_tokens + calls[3].prompt_tokens)
    assert 0 < u1.seconds < sum(r.total for r in replies[:3]) + 0.01
    by_channel = {r.who: r for r in await core.meter.rows(scope="channel", days=1)}
    assert (by_channel["C1"].turns, by_channel["C2"].turns, by_channel["C2"].refused) == (2, 2, 1)
    [tenant] = await core.meter.rows(scope="tenant", days=1)
    assert (tenant.tenant, tenant.day, tenant.turns, tenant.refused) == ("T1", day_of(), 4, 1)
    assert tenant.prompt == sum(c.prompt_tokens for c in calls) and tenant.completion == 20

    # One hash per tenant and day, kept PARLEY_QUOTA_METER_DAYS.
    key = f"{core.settings.redis.prefix}:usage:T1:{day_of()}"
    assert await redis.hget(key, "user:U1:completion") == b"10"
    assert 34 * 86400 < await redis.ttl(key) <= 35 * 86400

    # What `parley report --by user` prints from it.
    lines: list[str] = []
    settings = make_settings()  # the same Redis prefix as the core's
    assert await run_report(settings, days=1, tenant=None, as_json=False, by="user", out=lines.append) == 2
    table = lines[0].splitlines()
    assert table[0].split() == [
        "tenant",
        "user",
        "day",
        "turns",
        "prompt",
        "tokens",
        "completion",
        "tokens",
        "seconds",
        "refused",
    ]
    cells = table[1].split()
    assert cells[:4] == ["T1", "U1", day_of(), "2"] and cells[5:] == ["10", f"{u1.seconds:.1f}", "1"]


async def test_prometheus_counts_tokens_per_tenant_and_refusals_per_limit(build):
    core = await build(
        FakeLLM(lambda _: Answer(["Fine."], completion_tokens=3)),
        quota=QuotaSettings(_env_file=None, tenant_turns_per_minute=2),
    )
    replies = [await core.handle(turn(user=f"U{n}", channel=f"C{n}"), RecordingSink()) for n in range(3)]
    other = await core.handle(
        Turn(platform="test", tenant="T2", channel="C", user="U", text="Hello there", event_id="e"), RecordingSink()
    )
    text = core.metrics.render().decode()
    prompt = sum(r.prompt_tokens for r in replies)
    assert f'parley_tokens_total{{kind="prompt",tenant="T1"}} {float(prompt)}' in text
    assert 'parley_tokens_total{kind="completion",tenant="T1"} 6.0' in text
    assert f'parley_tokens_total{{kind="prompt",tenant="T2"}} {float(other.prompt_tokens)}' in text
    assert 'parley_quota_refused_total{limit="tenant_turns_per_minute"} 1.0' in text
    assert 'parley_turns_total{outcome="over_quota",platform="test"} 1.0' in text
    assert "U0" not in text  # never a label per user


async def test_the_memory_meter_for_a_bot_without_redis():
    meter = MemoryMeter()
    await meter.record(turn(), Spent(prompt=7, completion=3, seconds=1.5))
    await meter.record(turn(channel="C:2"), Spent(refused=True))
    [row] = await meter.rows(scope="user", days=1)
    assert (row.who, row.turns, row.prompt, row.completion, row.seconds, row.refused) == ("U1", 1, 7, 3, 1.5, 1)
    assert [r.who for r in await meter.rows(scope="channel", days=1)] == ["C1", "C:2"]  # ids may hold ':'
