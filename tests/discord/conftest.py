"""The Discord tier's fixtures: the fake Discord, and Parley's real serving path running against it
(the real discord.py client, dialogue manager, Redis and, where a test asks for it, the vLLM engine)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

import adapters.discord
from adapters.discord.app import DiscordAdapter
from bot.config import DialogueSettings, DiscordSettings, RedisSettings, Settings
from bot.handoff.desk import Said, Ticket
from bot.runtime import Runtime
from bot.store.context import Context
from bot.turns import ConversationKey
from tests.conftest import serve_one
from tests.discord.fake import FakeDiscord, Json

DEAD_LLM = "http://127.0.0.1:9/v1"  # for tests that never reach the model
THREAD_TYPES = (10, 11, 12)  # news, public and private threads (forum posts are public threads)


def discord_settings(fake: FakeDiscord, **overrides: Any) -> DiscordSettings:
    values: dict[str, Any] = {
        "token": fake.token,
        "api_base_url": fake.api_base_url,
        "gateway_url": fake.gateway_url,
        "guild_ready_timeout": 0.1,
        "edit_interval": 0.2,
    }
    values.update(overrides)
    return DiscordSettings(_env_file=None, **values)


def on_own_redis(make_settings: Callable[..., Settings], redis: Any, fake: FakeDiscord, **discord: Any) -> Settings:
    """Settings for a test that stops and starts its own Redis (`redis_to_stop`): the Redis inbox
    on it, and a model that is never reached."""
    return make_settings(
        llm_url=DEAD_LLM,
        redis=RedisSettings(_env_file=None, url=redis.url, prefix="outage", socket_timeout=1),
        dialogue=DialogueSettings(_env_file=None, inbox="redis"),
        discord=discord_settings(fake, **discord),
    )


async def poll(predicate: Callable[[], Any | Awaitable[Any]], *, timeout: float = 120.0, interval: float = 0.02) -> Any:
    """Wait until `predicate()` (sync or async) is truthy and return its value. Generous timeout:
    the machine has two cores and an engine may be busy with other tests."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)


@dataclass
class DiscordStack:
    """Parley serving Discord: the runtime, the adapter and the fake it talks to."""

    fake: FakeDiscord
    runtime: Runtime
    adapter: DiscordAdapter

    async def context(self, tenant: str, channel: str, thread: str) -> Context:
        return await self.runtime.store.load(ConversationKey("discord", tenant, channel, thread))

    async def answered(self, tenant: str, channel: str, thread: str, *, answers: int = 1) -> Context:
        """The conversation's context once it holds `answers` assistant messages: a turn is
        saved after its last edit, so what the user sees is final by then."""

        async def enough() -> Context | None:
            context = await self.context(tenant, channel, thread)
            return context if sum(m.role == "assistant" for m in context.messages) >= answers else None

        return await poll(enough)

    async def answered_in(self, channel: Json, thread: str, *, answers: int = 1) -> Context:
        tenant = channel.get("guild_id") or "dm"
        # A thread's conversation is in its channel; a channel's `parent_id` is its category.
        parent = channel["parent_id"] if channel["type"] in THREAD_TYPES else channel["id"]
        return await self.answered(tenant, parent, thread, answers=answers)


@asynccontextmanager
async def serving(fake: FakeDiscord, settings: Settings) -> AsyncIterator[DiscordStack]:
    """`parley serve` with only the Discord adapter, until the block ends; then the ordered shutdown."""

    def ready(adapter: DiscordAdapter) -> bool:
        return adapter.client is not None and adapter.client.is_ready()

    async with serve_one(settings, adapters.discord.create, ready) as (runtime, adapter):
        yield DiscordStack(fake, runtime, adapter)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def channel(fake: FakeDiscord) -> Json:
    """A text channel of a guild "acme" (add guilds before Parley connects: it reads them at IDENTIFY)."""
    return fake.add_guild("acme")["channels"][0]


@pytest.fixture
def alice(fake: FakeDiscord) -> Json:
    return fake.make_user("alice")


class TakingDesk:
    """A support desk that takes every ticket and keeps what it is sent (the Slack desk has its own
    tests, `tests/handoff`): here only the Discord side of the hand-off is under test."""

    name = "test-desk"

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []

    def reaches(self, key: ConversationKey | None, target: str) -> bool:
        return True

    async def open(self, ticket: Ticket, target: str = "") -> str:
        self.tickets.append(ticket)
        return f"T{len(self.tickets)}"

    async def post(self, thread: str, text: str) -> None:
        return None

    async def quote(self, thread: str, lines: Sequence[Said]) -> None:
        return None
