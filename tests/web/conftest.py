"""The web chat tier's fixtures: Parley's real serving path with the web adapter, and a test
client that speaks the widget's protocol over a real WebSocket (aiohttp's client)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

import adapters.web
from adapters.web.app import WebAdapter
from adapters.web.tokens import conversation_id
from bot.config import ActionsSettings, Settings, TenantsSettings, WebSettings
from bot.runtime import Runtime
from bot.store.context import Context
from bot.tools.sample_service import DESK, Desk, make_app
from bot.turns import ConversationKey
from tests.conftest import serve_one
from tests.standin import ScriptedEngine

SECRET = "a-test-secret-that-signs-visitor-tokens"
SITE = "shop"
DEAD_LLM = "http://127.0.0.1:9/v1"  # for tests that never reach the model
FRAME_TIMEOUT = 120.0  # two cores shared with an engine: generous, and never a timing assertion


def web_settings(**overrides: Any) -> WebSettings:
    values: dict[str, Any] = {"enabled": True, "host": "127.0.0.1", "port": 0, "secret": SECRET, "site": SITE}
    values.update(overrides)
    return WebSettings(_env_file=None, **values)


@dataclass
class Tab:
    """One browser tab's socket, as the widget uses it. `frames` keeps everything received."""

    ws: aiohttp.ClientWebSocketResponse
    welcome: dict[str, Any]
    frames: list[dict[str, Any]] = field(default_factory=list)
    _seen: int = 0

    @property
    def token(self) -> str:
        return self.welcome["token"]

    @property
    def visitor(self) -> str:
        return self.token.split(".")[1]

    @property
    def conversation(self) -> str:
        """What the visitor's conversation goes by past the adapter (answer ids, turns, tickets)."""
        return conversation_id(self.visitor)

    @property
    def history(self) -> list[dict[str, str]]:
        return self.welcome["history"]

    async def say(self, text: str, id: str = "msg-00000001") -> str:
        await self.ws.send_str(json.dumps({"type": "message", "id": id, "text": text}))
        return id

    async def send(self, frame: Any) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def next(self, *types: str, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
        """The next frame (of one of `types`, if given) not yet returned; earlier ones are kept in `frames`."""
        async with asyncio.timeout(timeout):
            while True:
                while self._seen < len(self.frames):
                    frame = self.frames[self._seen]
                    self._seen += 1
                    if not types or frame["type"] in types:
                        return frame
                msg = await self.ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"socket ended: {msg.type} {msg.data!r} {msg.extra!r}")
                self.frames.append(json.loads(msg.data))

    async def answer(self, answer_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The delta frames and the done frame of one answer."""
        deltas = []
        while True:
            frame = await self.next("delta", "done", "message")
            if frame.get("id") != answer_id and frame.get("reply_to") != answer_id:
                continue
            if frame["type"] == "delta":
                deltas.append(frame)
            elif frame["type"] == "done":
                return deltas, frame
            else:
                raise AssertionError(f"a message instead of an answer: {frame}")


@dataclass
class WebStack:
    """Parley serving the web chat: the runtime, the adapter and an HTTP client session."""

    runtime: Runtime
    adapter: WebAdapter
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.adapter.port}/ws"

    async def open(
        self, *, origin: str | None = None, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(self.ws_url, origin=origin, headers=headers, autoping=True)

    async def connect(
        self, token: str | None = None, *, origin: str | None = None, headers: dict[str, str] | None = None
    ) -> Tab:
        ws = await self.open(origin=origin, headers=headers)
        await ws.send_str(json.dumps({"type": "hello", "token": token}))
        tab = Tab(ws, {})
        tab.welcome = await tab.next("welcome")
        return tab

    def key(self, visitor: str) -> ConversationKey:
        return ConversationKey("web", SITE, conversation_id(visitor))

    async def context(self, visitor: str) -> Context:
        return await self.runtime.store.load(self.key(visitor))

    async def answered(self, visitor: str, *, turns: int = 1, timeout: float = 180) -> Context:
        """Wait until the visitor's context holds `turns` answers (saved after streaming)."""
        async with asyncio.timeout(timeout):
            while True:
                context = await self.context(visitor)
                if sum(m.role == "assistant" for m in context.messages) >= turns:
                    return context
                await asyncio.sleep(0.1)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[WebStack]:
    def ready(adapter: WebAdapter) -> bool:
        return adapter.ready.is_set()

    async with (
        serve_one(settings, adapters.web.create, ready) as (runtime, adapter),
        aiohttp.ClientSession() as session,
    ):
        yield WebStack(runtime, adapter, session)


@pytest_asyncio.fixture
async def stack_for(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """`async with stack_for(llm_url, **web_overrides) as stack:` Parley serving the web chat."""

    def make(llm_url: str = DEAD_LLM, *, llm: dict[str, Any] | None = None, dialogue: Any = None, **web: Any) -> Any:
        sections: dict[str, Any] = {"web": web_settings(**web)}
        if llm:
            sections["llm"] = make_settings(llm_url=llm_url).llm.model_copy(update=llm)
        if dialogue is not None:
            sections["dialogue"] = dialogue
        return serving(make_settings(llm_url=llm_url, **sections))

    return make


@pytest_asyncio.fixture
async def sample_service() -> AsyncIterator[tuple[Desk, int]]:
    """The sample service (`parley sample-service`) on a free loopback port: its ticket desk, and the port."""
    app = make_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield app[DESK], runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def web_with_actions(
    tmp_path: Path, sample_service: tuple[Desk, int], make_settings: Callable[..., Settings]
) -> Callable[..., Any]:
    """`async with web_with_actions(ScriptedEngine(decisions=[...])) as stack:` Parley serving the
    web chat with the scripted stand-in engine (its structured-output answers are the model's
    action decisions), the shipped sample actions allowed and pointed at the sample service."""
    text = (Path(__file__).parents[2] / "deploy" / "sample-actions.toml").read_text()
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(text.replace("http://127.0.0.1:8765", f"http://127.0.0.1:{sample_service[1]}"))

    @asynccontextmanager
    async def make(engine: ScriptedEngine, **web: Any) -> AsyncIterator[WebStack]:
        async with engine.serving() as url:
            settings = make_settings(
                llm_url=url,
                web=web_settings(**web),
                tenants=TenantsSettings(_env_file=None, file=tenants),
                actions=ActionsSettings(_env_file=None, fetch_allow=["127.0.0.0/8"]),
            )
            async with serving(settings) as stack:
                yield stack

    return make
