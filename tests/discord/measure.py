"""Measure Parley's Discord path on loopback: time to the first visible token, REST calls per answer.

    .venv/bin/python -m tests.discord.measure [--answers 20] [--max-tokens 64] [--edit-interval 1.0]

Starts a redis-server, the local vLLM CPU engine with the demo model, and the fake
Discord; runs `parley serve`'s path (the real discord.py client, dialogue manager,
Redis, engine) and sends mentions one at a time. "First visible token" is the time
from the fake dispatching MESSAGE_CREATE to it receiving the POST that shows the
answer's first tokens. REST calls per answer count the post and every edit of it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from pathlib import Path

from bot.config import (
    ContextSettings,
    DialogueSettings,
    LLMSettings,
    LogSettings,
    RedisSettings,
    Settings,
)
from bot.engine.launcher import local_engine
from tests.conftest import RedisServer, engine_settings
from tests.discord.conftest import discord_settings, poll, serving
from tests.discord.fake import FakeDiscord


async def measure(answers: int, max_tokens: int, edit_interval: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        fake = FakeDiscord()
        await fake.start()
        try:
            async with local_engine(engine_settings(), print) as engine_url:
                settings = Settings(
                    log=LogSettings(_env_file=None, level="WARNING"),
                    redis=RedisSettings(_env_file=None, url=redis.url, prefix="measure"),
                    llm=LLMSettings(
                        _env_file=None, base_url=engine_url, max_tokens=max_tokens, extra_body={"ignore_eos": True}
                    ),
                    context=ContextSettings(_env_file=None),
                    dialogue=DialogueSettings(_env_file=None),
                    engine=engine_settings(),
                    discord=discord_settings(fake, edit_interval=edit_interval),
                )
                await run(fake, settings, answers)
        finally:
            await fake.stop()
            redis.stop()


async def run(fake: FakeDiscord, settings: Settings, answers: int) -> None:
    channel = fake.add_guild("bench")["channels"][0]
    user = fake.make_user("bench")
    first_visible: list[float] = []
    calls: list[int] = []
    totals: list[float] = []
    async with serving(fake, settings) as stack:
        for i in range(answers + 1):  # the first one warms the engine up and is not counted
            before = len(fake.calls)
            sent = time.monotonic()
            question = await fake.say(channel, user, f"question number {i}: what is a prefix cache?", mention_bot=True)
            reply = (await poll(functools.partial(fake.replies_to, question)))[0]
            post = next(c for c in fake.calls[before:] if c.method == "POST" and c.status == 200)
            await stack.answered_in(channel, question["id"])
            done = time.monotonic()
            if i == 0:
                continue
            first_visible.append(post.at - sent)
            totals.append(done - sent)
            calls.append(sum(1 for c in fake.calls[before:] if c is post or reply["id"] in c.path))
    print(
        f"answers measured:                {len(first_visible)} (max_tokens={settings.llm.max_tokens}, "
        f"edit_interval={settings.discord.edit_interval}s)"
    )
    print(
        f"median MESSAGE_CREATE -> first visible token: {statistics.median(first_visible) * 1000:.0f} ms "
        f"(min {min(first_visible) * 1000:.0f}, max {max(first_visible) * 1000:.0f})"
    )
    print(f"median MESSAGE_CREATE -> final edit saved:    {statistics.median(totals) * 1000:.0f} ms")
    print(
        f"REST calls per answer:           median {statistics.median(calls):.0f}, "
        f"mean {statistics.mean(calls):.2f} (1 post + edits)"
    )
    print(f"unplanned 429s:                  {fake.unplanned_429s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--edit-interval", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(measure(args.answers, args.max_tokens, args.edit_interval))


if __name__ == "__main__":
    main()
