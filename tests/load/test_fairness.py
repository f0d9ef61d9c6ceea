"""The fair queue in front of the engine's slots, through the dialogue manager and the real LLM
client against the stand-in engine, and `parley bench fairness` end to end on a small load."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from bot.config import Settings
from bot.runtime import open_runtime
from bot.tools.cli import build_parser
from bot.tools.fairness import run_fairness
from bot.tools.standin import ScriptedEngine
from bot.turns import Outcome, Turn
from tests.test_dialogue import RecordingSink


def _turn(user: str, n: int) -> Turn:
    channel = f"{user}-{n}"  # a conversation each: nothing serialises them but the engine's slot
    return Turn(platform="test", tenant="t", channel=channel, user=user, text=f"{user} {n}", event_id=channel)


@pytest.mark.parametrize(
    ("share", "order"),
    [
        ("user", ["heavy 0", "heavy 1", "light 0", "heavy 2", "heavy 3", "heavy 4"]),
        ("none", ["heavy 0", "heavy 1", "heavy 2", "heavy 3", "heavy 4", "light 0"]),
    ],
)
async def test_a_light_users_turn_goes_ahead_of_a_heavy_users_queue(
    make_settings: Callable[..., Settings], share: str, order: list[str]
) -> None:
    engine = ScriptedEngine("one two three", token_delay=0.02)
    async with engine.serving() as url:
        settings = make_settings(llm_url=url)
        settings.llm.max_concurrency = 1
        settings.llm.fair_share = share
        async with open_runtime(settings) as rt:

            async def handle(turn: Turn) -> Outcome:
                return (await rt.manager.handle(turn, RecordingSink())).outcome

            heavy = [asyncio.create_task(handle(_turn("heavy", n))) for n in range(5)]
            async with asyncio.timeout(30):  # the first holds the engine, the others wait for it
                while rt.llm.waiting() < 4:
                    await asyncio.sleep(0.005)
            light = asyncio.create_task(handle(_turn("light", 0)))
            outcomes = await asyncio.gather(*heavy, light)
    assert set(outcomes) == {Outcome.ANSWERED}
    assert [s.last for s in engine.streamed] == order


async def test_bench_fairness_prints_the_three_runs(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["bench", "fairness", *("--light", "2", "--rate", "4", "--heavy", "4"), *("--seconds", "1", "--slots", "2")]
    )
    said: list[str] = []
    await run_fairness(make_settings(), args, said.append)
    out = capsys.readouterr().out
    assert said and "2 light users at 4 turns/s each, a heavy user at 4x that, 2 engine slots" in said[0]
    rows = {
        name: [float(x) for x in figures]
        for name, *figures in re.findall(
            r"^(light users alone|\+ heavy, first come first served|\+ heavy, fair queue per user)\s+"
            r"([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)\s+([\d.]+)$",
            out,
            re.M,
        )
    }
    assert len(rows) == 3, out
    for name, (p50, p95, light, heavy) in rows.items():
        assert 0 < p50 <= p95 and light > 0
        assert (heavy > 0) == (name != "light users alone")
    assert re.search(r"first come first served [\d.]+x, fair queue [\d.]+x", out)
