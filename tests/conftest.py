"""Fixtures that own real servers: a redis-server and a vLLM CPU engine, started here and stopped here.

`tests/run.sh` installs what they need (redis-server, the engine's venv, the demo
model); these fixtures only start and stop them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from bot.adapter import AdapterContext
from bot.config import (
    ContextSettings,
    DialogueSettings,
    EngineSettings,
    LLMSettings,
    LogSettings,
    RedisSettings,
    RoutingSettings,
    Settings,
)
from bot.engine.launcher import DEMO_MODEL_NAME, free_port, local_engine
from bot.runtime import Runtime, open_runtime
from bot.server import run_adapters


class RedisServer:
    """A real redis-server on a free loopback port. Can be restarted; with `persistent`, it keeps
    its data across a restart (an append-only file synced on every write, as production runs)."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; tests/run.sh installs it (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *self.persistence,
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for _ in range(100):
            try:
                subprocess.run(["redis-cli", "-p", str(self.port), "ping"], check=True, capture_output=True, timeout=2)
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}") from None
                import time

                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_to_stop(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start again (on the same port)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def engine_settings() -> EngineSettings:
    """The demo model on a free port with a small KV cache; the venv and model are shared
    with `parley engine` (PARLEY_ENGINE_HOME, default ~/.cache/parley), so they are built once.
    The demo model by name: unset, a real model would be downloaded where the Hub is reachable."""
    return EngineSettings(
        model=DEMO_MODEL_NAME, port=0, max_num_seqs=32, kv_cache_bytes=256 * 1024**2, max_model_len=4096
    )


@pytest_asyncio.fixture(scope="session")
async def engine() -> AsyncIterator[str]:
    """The base URL (`.../v1`) of a real vLLM CPU engine serving the random-weight demo model."""
    async with local_engine(engine_settings()) as base_url:
        yield base_url


@pytest.fixture
def make_settings(redis_server: RedisServer) -> Callable[..., Settings]:
    """Settings for one test: its own Redis key prefix, short answers, fast timeouts.

    Random weights never stop on their own, so answers are bounded by max_tokens with
    ignore_eos (a fixed, known length). Their label for a close routing call is just as random,
    so turns are routed by embeddings alone; a test of the LLM tie-break turns it on."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(*, llm_url: str | None = None, **sections: object) -> Settings:
        values: dict[str, object] = {
            "log": LogSettings(_env_file=None),
            "redis": RedisSettings(_env_file=None, url=redis_server.url, prefix=prefix),
            "llm": LLMSettings(
                _env_file=None,
                base_url=llm_url,
                max_tokens=12,
                extra_body={"ignore_eos": True},
                connect_timeout=10,
                read_timeout=30,
                total_timeout=120,
            ),
            "context": ContextSettings(_env_file=None),
            "dialogue": DialogueSettings(_env_file=None),
            "routing": RoutingSettings(_env_file=None, llm_fallback=False),
            "engine": engine_settings(),
        }
        values.update(sections)
        if llm_url:
            values["llm"] = values["llm"].model_copy(update={"base_url": llm_url})  # type: ignore[attr-defined]
        return Settings(**values)  # type: ignore[arg-type]

    return make


@asynccontextmanager
async def serve_one(
    settings: Settings, create: Callable[[AdapterContext], Any], ready: Callable[[Any], bool]
) -> AsyncIterator[tuple[Runtime, Any]]:
    """`parley serve` with one adapter until the block ends, then its ordered shutdown."""
    async with open_runtime(settings) as runtime:
        adapter = create(runtime.adapter_context())
        assert adapter is not None
        stop = asyncio.Event()
        server = asyncio.create_task(run_adapters(runtime, [adapter], stop=stop))
        try:
            async with asyncio.timeout(120):  # two cores, and an engine may be busy
                while not (server.done() or ready(adapter)):
                    await asyncio.sleep(0.02)
            if server.done():
                server.result()  # the adapter failed to start: show why
            yield runtime, adapter
        finally:
            stop.set()
            async with asyncio.timeout(120):
                await server
