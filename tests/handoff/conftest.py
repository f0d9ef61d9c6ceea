"""Fixtures for handing off: Parley's real runtime (Redis, router with the local embedder, the
dialogue manager) with the real Slack desk posting into the fake Slack's support channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest_asyncio
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.desk import SlackDesk
from bot.config import HandoffSettings, Settings
from bot.runtime import Runtime, open_runtime
from tests.slack.conftest import BOT_TOKEN, DEAD_LLM, fake_slack  # noqa: F401 - the fake Slack fixture
from tests.slack.fake import FakeSlack

SUPPORT = "CSUPPORT"


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
async def runtime_for(make_settings: Callable[..., Settings], fake_slack: FakeSlack) -> Callable[..., Any]:  # noqa: F811
    """`async with runtime_for(desk=True, **handoff) as rt:` the runtime, its desk posting to the fake."""

    @asynccontextmanager
    async def make(*, desk: bool = True, tenants: Any = None, **handoff: Any) -> AsyncIterator[Runtime]:
        sections: dict[str, Any] = {"handoff": handoff_settings(**handoff)}
        if tenants is not None:
            sections["tenants"] = tenants
        async with open_runtime(make_settings(llm_url=DEAD_LLM, **sections)) as rt:
            if desk:
                client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
                rt.desks["slack"] = SlackDesk(client, channel=SUPPORT, store=rt.handoffs, limit=3000)
            yield rt

    return make
