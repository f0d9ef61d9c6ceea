"""The operations endpoint: /healthz, /readyz and /metrics for load balancers and Prometheus.

/healthz answers while the process runs. /readyz answers 200 only while Redis (when
configured) answers PING, at least one LLM engine is healthy, and every adapter
says it is connected; otherwise 503, with what is not ready in the JSON body. Optional
steps that failed and are being retried (`bot.ops.health.Degraded`) are listed under "degraded"
without making it 503: the process still serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from redis.exceptions import RedisError

from bot.adapter import Adapter
from bot.config import Settings
from bot.ops.health import Degraded
from bot.ops.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.llm.client import LLMClient

log = logging.getLogger(__name__)


def adapter_ready(adapter: Adapter) -> bool:
    """An adapter may expose `ready` (an asyncio.Event, set while connected); none means ready."""
    ready = getattr(adapter, "ready", None)
    return ready is None or ready.is_set()


@dataclass(frozen=True)
class Watched:
    """What the ops endpoint looks at: the process's settings, clients and optional steps."""

    settings: Settings
    redis: Redis | None
    llm: LLMClient
    metrics: Metrics
    degraded: Degraded


async def readiness(watched: Watched, adapters: Sequence[Adapter]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    if watched.redis is not None:
        try:
            async with asyncio.timeout(watched.settings.redis.socket_timeout):
                checks["redis"] = bool(await watched.redis.ping())
        except (RedisError, OSError, TimeoutError):
            checks["redis"] = False
    checks["llm"] = any((await watched.llm.health()).values())
    for adapter in adapters:
        checks[f"adapter:{adapter.platform}"] = adapter_ready(adapter)
    return checks


@asynccontextmanager
async def ops_server(watched: Watched, adapters: Sequence[Adapter]) -> AsyncIterator[int]:
    """Serve the endpoints for as long as the context is open; yields the bound port."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness(watched, adapters)
        body: dict[str, object] = dict(checks)
        if problems := watched.degraded.problems():
            body["degraded"] = problems
        return web.Response(
            status=200 if all(checks.values()) else 503,
            text=json.dumps(body) + "\n",
            content_type="application/json",
        )

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(
            body=watched.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    settings = watched.settings.ops
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = watched.metrics.ops_port = runner.addresses[0][1]
    log.info("ops endpoint on %s:%s (/healthz, /readyz, /metrics)", settings.host, port)
    try:
        yield port
    finally:
        await runner.cleanup()
