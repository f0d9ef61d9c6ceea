"""Fixtures for handing off: Parley's real runtime (Redis, router with the local embedder, the
dialogue manager) with the real Slack desk posting into the fake Slack's support channel; and
`parley serve` with the web chat and Slack at once (`serving_web_and_slack`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest_asyncio
from slack_sdk.web.async_client import AsyncWebClient

import adapters.slack
import adapters.web
from adapters.slack.desk import SlackDesk
from bot.config import HandoffSettings, Settings
from bot.runtime import Runtime, open_runtime
from bot.server import run_adapters
from tests.slack.conftest import BOT_TOKEN, DEAD_LLM, SlackStack, fake_slack  # noqa: F401 - the fake Slack fixture
from tests.slack.fake import FakeSlack
from tests.web.conftest import WebStack

SUPPORT = "CSUPPORT"


def quoted(speaker: str, text: str) -> str:
    """A transcript line as a ticket message's `text` shows it: the speaker, then the text (as
    Slack received it, escaped) quoted line by line, so it cannot pass for a line of Parley's."""
    return f"*{speaker}:*\n" + "\n".join(">" + line for line in text.split("\n"))


class Recording:
    """A customer's side of a conversation (what a platform's sink would show), recording every
    message; `fail` makes the next sends fail as a platform would."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail: Exception | None = None

    async def send(self, text: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(text)

    async def stream(self, chunks: Any) -> str:
        text = "".join([c async for c in chunks])
        self.sent.append(text)
        return text


def handoff_settings(**overrides: Any) -> HandoffSettings:
    return HandoffSettings(_env_file=None, **{"slack_channel": SUPPORT, **overrides})


@pytest_asyncio.fixture
async def runtime_for(make_settings: Callable[..., Settings], fake_slack: FakeSlack) -> Callable[..., Any]:
    """`async with runtime_for(desk=True, **handoff) as rt:` the runtime, its desk posting to the fake."""

    @asynccontextmanager
    async def make(*, desk: bool = True, tenants: Any = None, **handoff: Any) -> AsyncIterator[Runtime]:
        sections: dict[str, Any] = {"handoff": handoff_settings(**handoff)}
        if tenants is not None:
            sections["tenants"] = tenants
        async with open_runtime(make_settings(llm_url=DEAD_LLM, **sections)) as rt:
            if desk:
                client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
                rt.desks["slack"] = SlackDesk(client, channel=SUPPORT, store=rt.tickets, links=rt.links, limit=3000)
            yield rt

    return make


@asynccontextmanager
async def serving_web_and_slack(settings: Settings, fake: FakeSlack) -> AsyncIterator[tuple[WebStack, SlackStack]]:
    """`parley serve` with the web chat and Slack, until the block ends; then the ordered shutdown."""
    async with open_runtime(settings) as runtime, aiohttp.ClientSession() as session:
        context = runtime.adapter_context()
        slack, web = adapters.slack.create(context), adapters.web.create(context)
        assert slack is not None and web is not None
        stop = asyncio.Event()
        server = asyncio.create_task(run_adapters(runtime, [slack, web], stop=stop))
        try:
            async with asyncio.timeout(120):
                while not (server.done() or (slack.ready.is_set() and web.ready.is_set())):
                    await asyncio.sleep(0.02)
            if server.done():
                server.result()
            yield WebStack(runtime, web, session), SlackStack(fake, runtime, slack, session)
        finally:
            stop.set()
            async with asyncio.timeout(120):
                await server
