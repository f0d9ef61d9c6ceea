"""The Slack sink against the fake Web API: long answers, paging, native streaming and its fallback."""

from __future__ import annotations

import asyncio
import random

import pytest_asyncio
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.sink import SlackSink, StreamingSupport
from bot.reply import split_pages
from bot.turns import Turn
from tests.slack.conftest import BOT_TOKEN
from tests.slack.fake import TEAM

LIMIT = 3000


def long_answer(chars: int = 10_000) -> str:
    """Paragraphs of prose with a long code block in the middle, about `chars` long."""
    rng = random.Random(7)
    words = ["token", "cache", "prefix", "stream", "thread", "edit", "batch", "model", "reply", "slack"]
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        if len(parts) == 6:
            parts.append("```python\n" + "\n".join(f"x_{i} = compute({i}) + 1" for i in range(90)) + "\n```")
        else:
            parts.append(" ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) + ".")
    return "\n\n".join(parts)[:chars]


async def chunked(text: str, size: int = 7, *, delay: float = 0.0):
    for i in range(0, len(text), size):
        await asyncio.sleep(delay)  # as tokens do, arriving over time
        yield text[i : i + size]


@pytest_asyncio.fixture
async def client(fake_slack):
    return AsyncWebClient(
        token=BOT_TOKEN,
        base_url=fake_slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
    )


def turn(thread: str = "1700000000.000100") -> Turn:
    return Turn(platform="slack", tenant=TEAM, channel="C0001", user="UALICE", text="q", event_id="Ev1", thread=thread)


async def test_ten_thousand_characters_split_into_thread_messages(fake_slack, client):
    text = long_answer()
    sink = SlackSink(client, turn(), limit=LIMIT, interval=0.05, streaming=StreamingSupport(False))
    assert await sink.stream(chunked(text, delay=0.001)) == text
    posted = fake_slack.in_thread("C0001", "1700000000.000100")
    assert [m.text for m in posted] == split_pages(text, LIMIT)
    assert len(posted) >= 4 and all(len(m.text) <= LIMIT for m in posted)
    for page in (m.text for m in posted):  # every page shows closed code blocks
        assert page.count("```") % 2 == 0
    assert len(fake_slack.calls_to("chat.postMessage")) == len(posted)
    assert fake_slack.calls_to("chat.update")  # each page grew by edits before the next began


async def test_ten_thousand_characters_with_429s(fake_slack, client):
    fake_slack.rate_limits.update({"chat.postMessage": 2, "chat.update": 2})
    text = long_answer()
    sink = SlackSink(client, turn(), limit=LIMIT, interval=0.05, streaming=StreamingSupport(False))
    await sink.stream(chunked(text, 50, delay=0.01))
    assert [c.status for c in fake_slack.calls_to("chat.postMessage")].count(429) == 2
    assert [c.status for c in fake_slack.calls_to("chat.update")].count(429) == 2
    assert [m.text for m in fake_slack.in_thread("C0001", "1700000000.000100")] == split_pages(text, LIMIT)


async def test_native_stream_pages_a_long_answer(fake_slack, client):
    fake_slack.streaming = True
    text = long_answer()
    sink = SlackSink(client, turn(), limit=LIMIT, interval=0.05, streaming=StreamingSupport(True))
    assert await sink.stream(chunked(text, delay=0.001)) == text
    assert len(fake_slack.calls_to("chat.appendStream")) > len(
        posted := fake_slack.in_thread("C0001", "1700000000.000100")
    )
    posted = fake_slack.in_thread("C0001", "1700000000.000100")
    assert len(posted) >= 4 and all(m.streamed and m.stopped and len(m.text) <= LIMIT for m in posted)
    assert all(m.text.count("```") % 2 == 0 for m in posted)
    # Nothing lost or repeated: the pages hold the answer (cuts only drop the break they cut at,
    # and a code block cut in two is closed and reopened).
    shown = "".join(m.text for m in posted).replace("```\n```python", "").replace("```python", "").replace("```", "")
    assert "".join(shown.split()) == "".join(text.replace("```python", "").replace("```", "").split())


async def test_refused_native_stream_falls_back_without_losing_text(fake_slack, client):
    support = StreamingSupport(True)
    text = long_answer(4000)
    sink = SlackSink(client, turn(), limit=LIMIT, interval=0.05, streaming=support)
    assert await sink.stream(chunked(text)) == text
    assert [m.text for m in fake_slack.in_thread("C0001", "1700000000.000100")] == split_pages(text, LIMIT)
    assert support.available is False  # unknown_method: the workspace has no native streaming


async def test_dm_top_level_uses_edits_even_with_native_streaming(fake_slack, client):
    fake_slack.streaming = True
    sink = SlackSink(client, turn(thread=""), limit=LIMIT, interval=0.05, streaming=StreamingSupport(True))
    await sink.stream(chunked("short answer"))
    assert fake_slack.calls_to("chat.startStream") == []
    assert [m.text for m in fake_slack.in_thread("C0001", None)] == ["short answer"]
