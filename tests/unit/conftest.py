from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import pytest_asyncio
from aiohttp import web

from bot.config import EmbeddingSettings, LogSettings, Settings
from bot.routing.embeddings import Embedder
from bot.runtime import open_embedder
from tests.conftest import engine_settings


@pytest_asyncio.fixture(scope="module")
async def embedder() -> AsyncIterator[Embedder]:
    """The default embedder, as `open_runtime` opens it (one per test module)."""
    settings = Settings(
        log=LogSettings(_env_file=None), embed=EmbeddingSettings(_env_file=None), engine=engine_settings()
    )
    embedder = await open_embedder(settings)
    yield embedder
    await embedder.aclose()


@pytest.fixture
def loopback() -> Callable[[web.Application], AbstractAsyncContextManager[str]]:
    """Serves an aiohttp app on a free loopback port for a block; yields its /v1 base URL."""

    @asynccontextmanager
    async def serve(app: web.Application) -> AsyncIterator[str]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
        finally:
            await runner.cleanup()

    return serve
