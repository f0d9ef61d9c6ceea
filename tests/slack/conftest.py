"""The Slack tier's fixtures: the fake Slack, and Parley's real serving path running against it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio

import adapters.slack
from adapters.slack.app import SlackAdapter
from bot.config import Settings, SlackSettings
from bot.runtime import Runtime
from bot.store.context import Context
from bot.turns import ConversationKey
from tests.conftest import serve_one
from tests.slack.fake import TEAM, Delivery, FakeSlack, event_callback, signed_request

BOT_TOKEN = "xoxb-1111-2222-secret-bot-token"
APP_TOKEN = "xapp-1-A0001-3333-secret-app-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DEAD_LLM = "http://127.0.0.1:9/v1"  # for tests that never reach the model


def slack_settings(fake: FakeSlack, **overrides: Any) -> SlackSettings:
    values: dict[str, Any] = {
        "bot_token": BOT_TOKEN,
        "app_token": None,
        "signing_secret": SIGNING_SECRET,
        "api_base_url": fake.api_url,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "edit_interval": 0.2,
        "native_streaming": False,
    }
    values.update(overrides)
    return SlackSettings(_env_file=None, **values)


@dataclass
class SlackStack:
    """Parley serving Slack: the runtime, the adapter and the fake it talks to."""

    fake: FakeSlack
    runtime: Runtime
    adapter: SlackAdapter
    session: aiohttp.ClientSession

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}/slack/events"

    async def deliver(self, event: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], Delivery]:
        """Send an event as a signed Events API request; returns the payload and Parley's response."""
        body = event_callback(event, **{k: kw.pop(k) for k in ("event_id", "team") if k in kw})
        return body, await self.send(body, **kw)

    async def send(self, body: dict[str, Any], **kw: Any) -> Delivery:
        return await signed_request(self.session, self.events_url, body, secret=SIGNING_SECRET, **kw)

    async def context(self, channel: str, thread: str = "", team: str = TEAM) -> Context:
        return await self.runtime.store.load(ConversationKey("slack", team, channel, thread))

    async def answered(
        self, channel: str, thread: str = "", *, turns: int = 1, timeout: float = 180, team: str = TEAM
    ) -> Context:
        """Wait until the conversation's context holds `turns` answered turns (saved after the
        answer was streamed), and return it."""
        async with asyncio.timeout(timeout):
            while True:
                context = await self.context(channel, thread, team)
                if sum(m.role == "assistant" for m in context.messages) >= turns:
                    return context
                await asyncio.sleep(0.1)


@asynccontextmanager
async def serving(settings: Settings, fake: FakeSlack) -> AsyncIterator[SlackStack]:
    def ready(adapter: SlackAdapter) -> bool:
        return adapter.ready.is_set()

    async with (
        serve_one(settings, adapters.slack.create, ready) as (runtime, adapter),
        aiohttp.ClientSession() as session,
    ):
        yield SlackStack(fake, runtime, adapter, session)


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(token=BOT_TOKEN, app_token=APP_TOKEN).start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest_asyncio.fixture
async def stack_for(fake_slack: FakeSlack, make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """`async with stack_for(llm_url, **slack_overrides) as stack:` Parley over HTTP (or Socket
    Mode with app_token=APP_TOKEN) against the fake."""

    def make(
        llm_url: str = DEAD_LLM,
        *,
        llm: dict[str, Any] | None = None,
        dialogue: Any = None,
        redis: Any = None,
        **slack: Any,
    ) -> Any:
        sections: dict[str, Any] = {"slack": slack_settings(fake_slack, **slack)}
        if llm:
            base = make_settings(llm_url=llm_url).llm
            sections["llm"] = base.model_copy(update=llm)
        if dialogue is not None:
            sections["dialogue"] = dialogue
        if redis is not None:
            sections["redis"] = redis
        return serving(make_settings(llm_url=llm_url, **sections), fake_slack)

    return make
