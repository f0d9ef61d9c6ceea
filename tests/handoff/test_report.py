"""`parley report`: the figures written by the dialogue manager's stats, read back per tenant and day."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

from bot.ops.meter import RedisMeter, Spent
from bot.ops.stats import DayStats, RedisStats, day_of
from bot.tools.report import render_table, run_report
from bot.turns import ConversationKey, Turn

ROOT = Path(__file__).parents[2]


def turn(tenant: str, visitor: str, event_id: str | None = None) -> Turn:
    key = ConversationKey("web", tenant, visitor)
    return Turn(
        platform=key.platform,
        tenant=tenant,
        channel=visitor,
        user=visitor,
        text="x",
        event_id=event_id or uuid.uuid4().hex,
    )


async def fill(stats: RedisStats) -> None:
    """shop: 3 conversations, 4 answers, one handed off; 2 up, 1 down; 2 actions, 1 failed. acme: one answer."""
    for visitor in ("a", "b", "c"):
        await stats.answered(turn("shop", visitor, f"{visitor}-1"))
    await stats.answered(turn("shop", "a", "a-2"))
    await stats.handed_off(turn("shop", "b"))
    await stats.vote(Turn("web", "shop", "a", "a", "up", "v1"), "a-1", "up")
    await stats.vote(Turn("web", "shop", "a", "a", "up", "v2"), "a-2", "up")
    await stats.vote(Turn("web", "shop", "c", "c", "down", "v3"), "c-1", "down")
    await stats.answered(turn("acme", "z"))
    # shop: two action calls ran, one failed; neither makes a conversation of its own.
    await stats.acted(turn("shop", "a"), True)
    await stats.acted(turn("shop", "a"), True)
    await stats.acted(turn("shop", "d"), False)
    await stats.aclose()  # its owner writes what is still buffered, as the runtime does


async def test_report_prints_a_table_and_json_per_tenant_and_day(redis, make_settings):
    settings = make_settings()
    await fill(RedisStats(redis, prefix=settings.redis.prefix, conversation_ttl=60))
    lines: list[str] = []
    assert await run_report(settings, days=7, tenant=None, as_json=False, say=lambda _: None, out=lines.append) == 2
    table = lines[0].splitlines()
    assert table[0].split() == [
        "tenant",
        "day",
        "answers",
        "conversations",
        "handoffs",
        "without",
        "a",
        "person",
        "👍",
        "👎",
        "actions",
        "failed",
        "actions",
    ]
    assert table[1].split() == ["acme", day_of(), "1", "1", "0", "1", "(100.0%)", "0", "0", "0", "0"]
    assert table[2].split() == ["shop", day_of(), "4", "3", "1", "2", "(66.7%)", "2", "1", "2", "1"]

    lines.clear()
    await run_report(settings, days=1, tenant="shop", as_json=True, say=lambda _: None, out=lines.append)
    [row] = json.loads(lines[0])
    assert row == {
        "tenant": "shop",
        "day": day_of(),
        "answers": 4,
        "handoffs": 1,
        "resolved_by_person": 0,
        "conversations": 3,
        "without_human": 2,
        "without_human_percent": 66.7,
        "up": 2,
        "down": 1,
        "actions": 2,
        "action_failures": 1,
    }

    lines.clear()
    assert await run_report(settings, days=3, tenant="nobody", as_json=False, say=lambda _: None, out=lines.append) == 0
    assert lines == ["no figures for tenant nobody in the last 3 day(s)"]


def test_a_total_line_per_tenant_over_several_days():
    days = [
        DayStats("t", "2025-01-01", answers=2, conversations=2, handed_conversations=1, up=1),
        DayStats("t", "2025-01-02", answers=3, conversations=1, down=2, actions=4, action_failures=1),
    ]
    lines = render_table(days).splitlines()
    assert lines[-1].split() == ["t", "total", "5", "3", "0", "2", "(66.7%)", "1", "2", "4", "1"]


async def test_the_command_line(redis, redis_server, tmp_path):
    prefix = f"r{uuid.uuid4().hex[:8]}"
    await fill(RedisStats(redis, prefix=prefix, conversation_ttl=60))
    env_file = tmp_path / "none.env"
    env_file.write_text("")
    env = {**os.environ, "PARLEY_REDIS_URL": redis_server.url, "PARLEY_REDIS_PREFIX": prefix}
    parley = str(ROOT / ".venv" / "bin" / "parley")

    def run(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [parley, "--env-file", str(env_file), "report", *args],
            capture_output=True,
            text=True,
            env={**env, **overrides},
            timeout=120,
            check=False,
        )

    out = await asyncio.to_thread(run, "--json", "--tenant", "acme")
    assert out.returncode == 0, out.stderr
    assert [r["answers"] for r in json.loads(out.stdout)] == [1]
    bad = await asyncio.to_thread(run, "--days", "x")
    assert bad.returncode == 2 and "not a number of days" in bad.stderr
    down = await asyncio.to_thread(run, PARLEY_REDIS_URL="redis://127.0.0.1:9/0")
    assert down.returncode == 2 and "PARLEY_REDIS_URL" in down.stderr and "cannot reach Redis" in down.stderr


# -- the usage meter: --by user and --by channel ---------------------------------------------------


async def meter_fill(redis, prefix: str) -> None:
    """shop: U1 two turns in C1 (one refused over quota), U2 one turn in C1 and C:2. acme: one turn."""
    meter = RedisMeter(redis, prefix=prefix, days=35)
    await meter.record(Turn("web", "shop", "C1", "U1", "x", "1"), Spent(prompt=100, completion=20, seconds=1.25))
    await meter.record(Turn("web", "shop", "C1", "U1", "x", "2"), Spent(prompt=150, completion=30, seconds=2.0))
    await meter.record(Turn("web", "shop", "C1", "U1", "x", "3"), Spent(refused=True))
    await meter.record(Turn("web", "shop", "C1", "U2", "x", "4"), Spent(prompt=1000, completion=2000, seconds=0.5))
    await meter.record(Turn("web", "shop", "C:2", "U2", "x", "5"), Spent(prompt=10, completion=1, seconds=0.1))
    await meter.record(Turn("web", "acme", "C9", "U9", "x", "6"), Spent(prompt=5, completion=5, seconds=0.2))
    await meter.aclose()


async def test_report_by_user_and_by_channel(redis, make_settings):
    settings = make_settings()
    await meter_fill(redis, settings.redis.prefix)
    lines: list[str] = []
    assert await run_report(settings, days=7, tenant="shop", as_json=False, by="user", out=lines.append) == 2
    table = [line.split() for line in lines[0].splitlines()]
    assert table == [
        ["tenant", "user", "day", "turns", "prompt", "tokens", "completion", "tokens", "seconds", "refused"],
        ["shop", "U1", day_of(), "2", "250", "50", "3.2", "1"],
        ["shop", "U2", day_of(), "2", "1,010", "2,001", "0.6", "0"],
    ]

    lines.clear()
    assert await run_report(settings, days=1, tenant=None, as_json=True, by="channel", out=lines.append) == 3
    assert json.loads(lines[0]) == [
        {"tenant": "acme", "channel": "C9", "day": day_of(), "turns": 1, "prompt_tokens": 5, "completion_tokens": 5,
         "seconds": 0.2, "refused": 0},
        {"tenant": "shop", "channel": "C1", "day": day_of(), "turns": 3, "prompt_tokens": 1250,
         "completion_tokens": 2050, "seconds": 3.75, "refused": 1},
        {"tenant": "shop", "channel": "C:2", "day": day_of(), "turns": 1, "prompt_tokens": 10,
         "completion_tokens": 1, "seconds": 0.1, "refused": 0},
    ]  # fmt: skip

    lines.clear()
    assert await run_report(settings, days=3, tenant="nobody", as_json=False, by="user", out=lines.append) == 0
    assert lines == ["no usage for tenant nobody in the last 3 day(s)"]
    # --by tenant is the report it always was.
    lines.clear()
    assert await run_report(settings, days=1, tenant=None, as_json=False, by="tenant", out=lines.append) == 0
    assert lines == ["no figures for any tenant in the last 1 day(s)"]


async def test_the_command_line_by_user(redis, redis_server, tmp_path):
    prefix = f"r{uuid.uuid4().hex[:8]}"
    await meter_fill(redis, prefix)
    env_file = tmp_path / "none.env"
    env_file.write_text("")
    env = {**os.environ, "PARLEY_REDIS_URL": redis_server.url, "PARLEY_REDIS_PREFIX": prefix}
    parley = str(ROOT / ".venv" / "bin" / "parley")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [parley, "--env-file", str(env_file), "report", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)

    out = await asyncio.to_thread(run, "--by", "user", "--json", "--tenant", "acme")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"tenant": "acme", "user": "U9", "day": day_of(), "turns": 1, "prompt_tokens": 5, "completion_tokens": 5,
         "seconds": 0.2, "refused": 0}
    ]  # fmt: skip
    bad = await asyncio.to_thread(run, "--by", "visitor")
    assert bad.returncode == 2 and "invalid choice: 'visitor'" in bad.stderr
