"""Measure the Slack path: event -> first visible token, and Web API calls per answer.

    .venv/bin/python -m tests.slack.measure [--answers 20] [--max-tokens 48]

Starts what it needs (a redis-server, the local vLLM CPU engine with the demo model,
the fake Slack), runs Parley's real serving path with the default Slack settings (at
most one edit per second), sends @mentions one after another, each in its own
thread, and prints medians for post-then-edit (chat.postMessage + chat.update) and
for native streaming (chat.startStream/appendStream/stopStream).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bot.config import ContextSettings, DialogueSettings, LLMSettings, LogSettings, RedisSettings, Settings
from bot.engine.launcher import local_engine
from tests.conftest import RedisServer, engine_settings
from tests.slack.conftest import APP_TOKEN, BOT_TOKEN, serving, slack_settings
from tests.slack.fake import FakeSlack, mention

CHAT = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")


async def run_mode(settings: Settings, fake: FakeSlack, answers: int, label: str) -> None:
    first_visible: list[float] = []
    acks: list[float] = []
    calls_per_answer: list[int] = []
    async with serving(settings, fake) as stack:
        for i in range(answers):
            event = mention("C0MEASURE", f"question number {i}: how does prefix caching help?")
            before = len(fake.calls)
            sent = time.monotonic()
            _, ack = await stack.deliver(event)
            await stack.answered("C0MEASURE", event["ts"])
            mine = [c for c in fake.calls[before:] if c.method in CHAT]
            first = min(c.ended for c in mine if c.method in ("chat.postMessage", "chat.startStream") and c.ended)
            first_visible.append(first - sent)
            acks.append(ack.at - sent)
            calls_per_answer.append(len(mine))
    print(
        f"{label}: {answers} answers of {settings.llm.max_tokens} tokens, "
        f"edit_interval {settings.slack.edit_interval:g} s"
    )
    print(f"  event -> ack                 median {statistics.median(acks) * 1000:7.1f} ms")
    print(
        f"  event -> first visible token median {statistics.median(first_visible) * 1000:7.1f} ms "
        f"(min {min(first_visible) * 1000:.1f}, max {max(first_visible) * 1000:.1f})"
    )
    print(
        f"  Web API calls per answer     median {statistics.median(calls_per_answer):g} "
        f"(min {min(calls_per_answer)}, max {max(calls_per_answer)})"
    )


async def main(answers: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            async with local_engine(engine_settings(), lambda line: print(f"engine: {line}")) as base_url:
                for label, native in (("post + edits", False), ("native streaming", True)):
                    fake = await FakeSlack(token=BOT_TOKEN, app_token=APP_TOKEN, streaming=native).start()
                    try:
                        settings = Settings(
                            log=LogSettings(_env_file=None, level="WARNING"),
                            redis=RedisSettings(_env_file=None, url=redis.url, prefix=f"m{uuid.uuid4().hex[:6]}"),
                            llm=LLMSettings(
                                _env_file=None,
                                base_url=base_url,
                                max_tokens=max_tokens,
                                extra_body={"ignore_eos": True},
                            ),
                            context=ContextSettings(_env_file=None),
                            dialogue=DialogueSettings(_env_file=None),
                            engine=engine_settings(),
                            slack=slack_settings(fake, edit_interval=1.0, native_streaming=native),
                        )
                        await run_mode(settings, fake, answers, label)
                    finally:
                        await fake.close()
        finally:
            redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    asyncio.run(main(args.answers, args.max_tokens))
