"""The composition root: creates every shared client once and closes each in order.

`open_runtime()` owns the local engine (if one is started), the LLM client, the Redis
client and the embedder through one `AsyncExitStack`; everything else (tenants, router,
knowledge base, moderation, handlers, the dialogue manager) is built here once and
handed what it needs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import Settings
from bot.store.context import ContextStore, MemoryContextStore, RedisContextStore
from bot.store.dedupe import Deduper, MemoryDeduper, RedisDeduper
from bot.dialogue.manager import DialogueManager
from bot.routing.embeddings import Embedder, LocalEmbedder, OpenAIEmbedder
from bot.engine.launcher import EnginePaths, ensure_embedder, ensure_installed, local_engine
from bot.errors import ConfigError
from bot.handlers import Services, build_handlers
from bot.handoff.flow import Desk, HandoffGate, Handoffs, HandoffStore, MemoryHandoffStore, RedisHandoffStore
from bot.ops.health import Degraded
from bot.knowledge.base import KnowledgeBase
from bot.llm.client import LLMClient
from bot.ops.metrics import Metrics
from bot.moderation.moderator import Moderator
from bot.store.batching import RedisBatcher
from bot.routing.router import Router
from bot.ops.stats import AnswerIndex, MemoryAnswerIndex, MemoryStats, RedisAnswerIndex, RedisStats, Stats
from bot.tenants import Tenants, load_tenants

log = logging.getLogger(__name__)

# Tried when PARLEY_REDIS_URL is unset, so a newcomer with a local Redis keeps context.
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    llm: LLMClient
    store: ContextStore
    deduper: Deduper
    manager: DialogueManager
    redis: Redis | None
    embedder: Embedder | None = None
    kb: KnowledgeBase | None = None
    router: Router | None = None
    tenants: Tenants | None = None
    metrics: Metrics = field(default_factory=Metrics)
    # Handing off to people and feedback (bot.handoff.flow, bot.ops.stats). `desks` starts empty: an
    # adapter that offers a desk (Slack, with PARLEY_HANDOFF_SLACK_CHANNEL) registers it there
    # when it is created, and the dialogue manager reads it at each handoff.
    handoffs: HandoffStore = field(default_factory=MemoryHandoffStore)
    desks: dict[str, Desk] = field(default_factory=dict)
    # Caps on new tickets per platform, registered the same way (the web chat's, for anonymous visitors).
    handoff_gates: dict[str, HandoffGate] = field(default_factory=dict)
    stats: Stats = field(default_factory=MemoryStats)
    answers: AnswerIndex = field(default_factory=MemoryAnswerIndex)
    # Optional steps that failed and are being retried (an adapter's slash-command registration):
    # adapters are handed it, /readyz shows it (bot.ops.health).
    degraded: Degraded = field(default_factory=Degraded)


def freeze_heap() -> None:
    """Hide what start-up built (modules, models, tokenizers, indexes) from the garbage
    collector, once the process has started: a full collection then walks only what turns
    allocate, instead of pausing every turn in flight for tens of milliseconds (49 ms
    measured in `parley bench`). Only the process's owner calls it (the CLI), once."""
    gc.collect()
    gc.freeze()


async def cancel_and_wait(task: asyncio.Task[object], *, poll: float = 0.1) -> None:
    """Cancel `task` and wait until it has ended, cancelling again while it goes on. On
    Python 3.11 `asyncio.wait_for`, which redis-py wraps around every command it sends,
    swallows a cancellation that arrives just as the command completes (fixed in 3.12)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=poll)


def redacted(url: str) -> str:
    """A Redis URL as it may appear in logs: host, port and db, never a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


async def _connect_redis(url: str, settings: Settings) -> Redis:
    redis = Redis.from_url(
        url,
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.socket_timeout,
        health_check_interval=30,
        password=settings.redis.password.get_secret_value() if settings.redis.password else None,
    )
    try:
        await redis.ping()
    except (RedisError, OSError):
        await redis.aclose()
        raise
    return redis


async def connect_redis(settings: Settings, say: Callable[[str], None] = log.info) -> Redis | None:
    """The configured Redis (an error if unreachable), else a local one if running, else None."""
    if settings.redis.url:
        try:
            return await _connect_redis(settings.redis.url, settings)
        except (RedisError, OSError) as exc:
            raise ConfigError("PARLEY_REDIS_URL", f"cannot reach Redis at {redacted(settings.redis.url)}: {exc}") from None
    try:
        redis = await _connect_redis(LOCAL_REDIS, settings)
    except (RedisError, OSError):
        say("no Redis configured or running locally: context is kept in memory and lost on exit")
        return None
    say(f"using the local Redis at {LOCAL_REDIS} for context (PARLEY_REDIS_URL is unset)")
    return redis


async def open_embedder(settings: Settings, say: Callable[[str], None] = log.info) -> Embedder:
    """The configured embedder: the endpoint when PARLEY_EMBED_BASE_URL is set, else the local
    ONNX model, built first if this machine has not built it yet (`parley engine --install-only`)."""
    embed = settings.embed
    if embed.base_url:
        key = embed.api_key.get_secret_value() if embed.api_key else None
        return OpenAIEmbedder(embed.base_url, model=embed.model, api_key=key, timeout=embed.timeout)
    paths = EnginePaths(settings.engine.home)
    if not (paths.embedder / "PARLEY_EMBEDDER").exists():
        await asyncio.to_thread(ensure_installed, settings.engine, say)
        await asyncio.to_thread(ensure_embedder, paths, say)
    model = "model.onnx" if embed.local_model == "fp32" else "model-int8.onnx"
    return await asyncio.to_thread(LocalEmbedder, paths.embedder, model=model, threads=embed.threads)


@asynccontextmanager
async def open_runtime(settings: Settings, say: Callable[[str], None] = log.info) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        tenants = load_tenants(settings.tenants.file)  # a bad file stops the start here, with one line
        redis = await connect_redis(settings, say)
        if redis is not None:
            stack.push_async_callback(redis.aclose)
            batcher = RedisBatcher(redis)  # one for the claims and loads that turns issue together
            stack.push_async_callback(batcher.aclose)
            store: ContextStore = RedisContextStore(
                redis, redis_settings=settings.redis, settings=settings.context, batcher=batcher
            )
            deduper: Deduper = RedisDeduper(redis, settings.redis, batcher=batcher)
        else:
            store = MemoryContextStore(redis_settings=settings.redis, settings=settings.context)
            deduper = MemoryDeduper(settings.redis)

        base_url = settings.llm.base_url
        if base_url is None:
            base_url = await stack.enter_async_context(local_engine(settings.engine, say))
        llm = await stack.enter_async_context(LLMClient(settings.llm, base_url=base_url))
        for url, healthy in (await llm.health()).items():
            if not healthy:
                log.warning("the LLM engine at %s is not healthy yet; turns will say so until it is", url)

        embedder = await open_embedder(settings, say)
        stack.push_async_callback(embedder.aclose)
        kb = KnowledgeBase(redis=redis, embedder=embedder, settings=settings.kb, prefix=settings.redis.prefix)
        router = await Router.create(settings=settings.routing, embedder=embedder, llm=llm)
        metrics = Metrics()
        metrics.live.circuits = llm.circuits
        metrics.live.llm_in_flight = lambda: llm.in_flight
        handoff_store: HandoffStore
        stats: Stats
        answers: AnswerIndex
        ttl = settings.redis.context_ttl
        if redis is not None:
            handoff_store = RedisHandoffStore(redis, prefix=settings.redis.prefix, ttl=ttl)
            stats = redis_stats = RedisStats(redis, prefix=settings.redis.prefix, conversation_ttl=ttl)
            stack.push_async_callback(redis_stats.aclose)  # before Redis closes (the stack unwinds in reverse)
            answers = RedisAnswerIndex(redis, prefix=settings.redis.prefix, ttl=ttl)
        else:
            handoff_store, stats, answers = MemoryHandoffStore(), MemoryStats(), MemoryAnswerIndex()
        desks: dict[str, Desk] = {}
        gates: dict[str, HandoffGate] = {}
        if settings.handoff.enabled and not settings.slack.enabled:
            log.warning("PARLEY_HANDOFF_SLACK_CHANNEL is set but Slack is not (SLACK_BOT_TOKEN): "
                        "users who ask for a person will be told no one is reachable")
        manager = DialogueManager(
            settings=settings,
            store=store,
            deduper=deduper,
            llm=llm,
            handlers=build_handlers(Services(settings=settings, llm=llm, kb=kb)),
            router=router,
            moderator=Moderator(llm),
            tenants=tenants,
            metrics=metrics,
            handoffs=Handoffs(settings=settings.handoff, store=handoff_store, stats=stats, desks=desks, gates=gates),
        )
        yield Runtime(
            settings=settings, llm=llm, store=store, deduper=deduper, manager=manager, redis=redis,
            embedder=embedder, kb=kb, router=router, tenants=tenants, metrics=metrics,
            handoffs=handoff_store, desks=desks, handoff_gates=gates, stats=stats, answers=answers,
        )
