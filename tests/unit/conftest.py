from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from aiohttp import web


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
