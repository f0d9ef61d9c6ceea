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

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from bot.actions.audit import Audit
from bot.actions.confirm import Confirmations, MemoryConfirmations, PendingCalls
from bot.actions.http import HttpRunner
from bot.actions.loop import Actions, Catalog
from bot.actions.spec import Runner
from bot.adapter import AdapterContext, Link
from bot.config import Settings
from bot.dialogue.manager import DialogueManager
from bot.dialogue.quota import Quotas
from bot.engine.launcher import EnginePaths, ensure_embedder, ensure_installed, local_engine
from bot.errors import ConfigError
from bot.handlers import Services, build_handlers
from bot.handoff.desk import Desk, HandoffGate
from bot.handoff.flow import Handoffs
from bot.handoff.store import HandoffStore, MemoryHandoffStore, RedisHandoffStore
from bot.knowledge.base import KnowledgeBase
from bot.llm.client import LLM, LLMClient
from bot.moderation.moderator import Moderator
from bot.ops.endpoint import Watched
from bot.ops.health import Degraded
from bot.ops.meter import MemoryMeter, Meter, RedisMeter
from bot.ops.metrics import Metrics
from bot.ops.stats import AnswerIndex, MemoryAnswerIndex, MemoryStats, RedisAnswerIndex, RedisStats, Stats
from bot.profiles import Profiles, open_profiles
from bot.routing.embeddings import Embedder, LocalEmbedder, MultilingualEmbedder, OpenAIEmbedder
from bot.routing.router import Router
from bot.store.batching import RedisBatcher
from bot.store.context import ContextStore, MemoryContextStore, RedisContextStore
from bot.store.dedupe import Deduper, MemoryDeduper, RedisDeduper
from bot.store.quota import Buckets, MemoryBuckets, RedisBuckets
from bot.tenants import Tenants, load_tenants

log = logging.getLogger(__name__)

# Tried when PARLEY_REDIS_URL is unset, so a newcomer with a local Redis keeps context.
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
# Connections to Redis one process holds at most (redis-py's own default). Commands past it
# wait for a free one, up to PARLEY_REDIS_SOCKET_TIMEOUT: redis-py's default pool fails them at
# once ("Too many connections"), which closed every web visitor past the 100th of a burst at
# `hello` (found by `parley loadtest` with more than 100 visitors).
REDIS_MAX_CONNECTIONS = 100


@dataclass(frozen=True)
class Runtime:
    """Every shared client and store, built once by `open_runtime` and closed by it."""

    settings: Settings
    llm: LLMClient
    store: ContextStore
    deduper: Deduper
    manager: DialogueManager
    redis: Redis | None  # None: context in memory (`parley chat` with no Redis)
    kb: KnowledgeBase
    metrics: Metrics
    stats: Stats
    answers: AnswerIndex
    tickets: HandoffStore  # handed-off conversations (the flow is the manager's `Handoffs`)
    profiles: Profiles  # the tenants file's settings per channel, with the run-time overrides
    # Registries that adapters fill through their `AdapterContext` (a desk once Slack has
    # confirmed its support channel, the web chat's cap on tickets, each platform's link to a
    # conversation); the handoff flow reads them at each use.
    desks: dict[str, Desk] = field(default_factory=dict)
    handoff_gates: dict[str, HandoffGate] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    # Optional steps that failed and are being retried (an adapter's slash-command registration):
    # adapters are handed it, /readyz shows it (bot.ops.health).
    degraded: Degraded = field(default_factory=Degraded)

    def watched(self) -> Watched:
        """What the ops endpoint looks at (`bot.ops.endpoint`)."""
        return Watched(self.settings, self.redis, self.llm, self.metrics, self.degraded)

    def adapter_context(self) -> AdapterContext:
        """What adapters are given of this runtime; what they register lands in `desks`,
        `handoff_gates` and `links`."""
        return AdapterContext(
            settings=self.settings,
            redis=self.redis,
            metrics=self.metrics,
            store=self.store,
            deduper=self.deduper,
            answers=self.answers,
            tickets=self.tickets,
            profiles=self.profiles,
            degraded=self.degraded,
            _desks=self.desks,
            _gates=self.handoff_gates,
            _links=self.links,
        )


def freeze_heap() -> None:
    """Hide what start-up built (modules, models, tokenizers, indexes) from the garbage
    collector, once the process has started: a full collection then walks only what turns
    allocate, instead of pausing every turn in flight for tens of milliseconds (49 ms
    measured in `parley bench`). Only the process's owner calls it (the CLI), once."""
    gc.collect()
    gc.freeze()


def redacted(url: str) -> str:
    """A Redis URL as it may appear in logs: host, port and db, never a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


async def _connect_redis(url: str, settings: Settings) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=settings.redis.socket_timeout,  # the wait for a free connection
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.socket_timeout,
        health_check_interval=30,
        password=settings.redis.password.get_secret_value() if settings.redis.password else None,
    )
    redis = Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
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
            raise ConfigError(
                "PARLEY_REDIS_URL", f"cannot reach Redis at {redacted(settings.redis.url)}: {exc}"
            ) from None
    try:
        redis = await _connect_redis(LOCAL_REDIS, settings)
    except (RedisError, OSError):
        say("no Redis configured or running locally: context is kept in memory and lost on exit")
        return None
    say(f"using the local Redis at {LOCAL_REDIS} for context (PARLEY_REDIS_URL is unset)")
    return redis


async def open_embedder(settings: Settings, say: Callable[[str], None] = log.info) -> Embedder:
    """The configured embedder: the endpoint when PARLEY_EMBED_BASE_URL is set, else a local
    model: the multilingual one, or MiniLM's ONNX file, built first if this machine has not
    built it yet (`parley engine --install-only`)."""
    embed = settings.embed
    if embed.base_url:
        key = embed.api_key.get_secret_value() if embed.api_key else None
        return OpenAIEmbedder(embed.base_url, model=embed.model, api_key=key, timeout=embed.timeout)
    if embed.local_model == "multilingual":
        return await asyncio.to_thread(MultilingualEmbedder.create)
    paths = EnginePaths(settings.engine.home)
    if not (paths.embedder / "PARLEY_EMBEDDER").exists():
        await asyncio.to_thread(ensure_installed, settings.engine, say)
        await asyncio.to_thread(ensure_embedder, paths, say)
    model = "model.onnx" if embed.local_model == "minilm" else "model-int8.onnx"
    return await asyncio.to_thread(LocalEmbedder, paths.embedder, model=model, threads=embed.threads)


async def open_actions(
    settings: Settings,
    tenants: Tenants,
    llm: LLM,
    redis: Redis | None,
    metrics: Metrics,
    stack: AsyncExitStack,
    stats: Stats | None = None,
) -> tuple[Actions, PendingCalls]:
    """The actions every tenant file defines, with their runners (closed by `stack`): HTTP
    ones at once, MCP servers started and their allowed tools listed (a server that cannot
    start stops the start with one line, as a bad setting does)."""
    specs = dict(tenants.actions)
    runners: dict[str, Runner] = {}
    if any(spec.http is not None for spec in specs.values()):
        http = HttpRunner(settings.actions)
        stack.push_async_callback(http.aclose)
        runners["http"] = http
    if tenants.mcp:
        try:
            from bot.actions.mcp import McpRunner  # the `mcp` extra
        except ImportError as exc:
            raise ConfigError("PARLEY_TENANTS_FILE", "[mcp] servers need: pip install 'parley[mcp]'") from exc
        mcp = McpRunner(tenants.mcp, secrets=settings.actions.secrets)
        await mcp.start()
        stack.push_async_callback(mcp.aclose)
        # (load_tenants refuses a tool named like an [actions] entry, so nothing is replaced)
        specs.update((spec.name, spec) for spec in mcp.specs())
        runners["mcp"] = mcp
    if specs:
        log.info("actions: %s", ", ".join(f"{s.name} ({s.mode})" for s in sorted(specs.values(), key=lambda s: s.name)))
    prefix = settings.redis.prefix
    audit = Audit(redis, prefix=prefix, days=settings.actions.audit_days, metrics=metrics, stats=stats)
    pending: PendingCalls = (
        Confirmations(redis, prefix=prefix, ttl=settings.actions.confirm_ttl)
        if redis is not None
        else MemoryConfirmations(ttl=settings.actions.confirm_ttl)
    )
    return Actions(settings.actions, Catalog(specs, runners), llm, audit), pending


def open_metering(settings: Settings, redis: Redis | None, stack: AsyncExitStack) -> tuple[Meter, Buckets]:
    """The usage meter and the quotas' token buckets: in Redis, shared by every replica; in
    memory for `parley chat` without Redis. The meter's buffer is written before Redis closes."""
    if redis is None:
        return MemoryMeter(), MemoryBuckets()
    meter = RedisMeter(redis, prefix=settings.redis.prefix, days=settings.quota.meter_days)
    stack.push_async_callback(meter.aclose)  # before Redis closes (the stack unwinds in reverse)
    return meter, RedisBuckets(redis, prefix=settings.redis.prefix)


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
        routing_cache = EnginePaths(settings.engine.home).routing
        router = await Router.create(settings=settings.routing, embedder=embedder, llm=llm, cache=routing_cache)
        metrics = Metrics()
        metrics.live.circuits = llm.circuits
        metrics.live.llm_in_flight = lambda: llm.in_flight
        metrics.live.llm_waiting = llm.waiting
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
        meter, buckets = open_metering(settings, redis, stack)
        desks: dict[str, Desk] = {}
        gates: dict[str, HandoffGate] = {}
        if settings.handoff.enabled and not settings.slack.enabled:
            log.warning(
                "PARLEY_HANDOFF_SLACK_CHANNEL is set but Slack is not (SLACK_BOT_TOKEN): "
                "users who ask for a person will be told no one is reachable"
            )
        actions, pending = await open_actions(settings, tenants, llm, redis, metrics, stack, stats)
        profiles = open_profiles(tenants, redis, prefix=settings.redis.prefix, refresh=settings.tenants.refresh)
        await stack.enter_async_context(profiles.watching())  # stopped before Redis closes
        manager = DialogueManager(
            settings=settings,
            store=store,
            deduper=deduper,
            llm=llm,
            handlers=build_handlers(Services(settings=settings, llm=llm, kb=kb, actions=actions, pending=pending)),
            router=router,
            moderator=Moderator(llm),
            tenants=profiles,
            metrics=metrics,
            handoffs=Handoffs(
                settings=settings.handoff, store=handoff_store, stats=stats, desks=desks, profiles=profiles, gates=gates
            ),
            stats=stats,
            actions=actions,
            pending=pending,
            quotas=Quotas(
                settings.quota,
                buckets,
                max_tokens=settings.llm.max_tokens,
                system_prompt=settings.context.system_prompt,
            ),
            meter=meter,
        )
        yield Runtime(
            settings=settings,
            llm=llm,
            store=store,
            deduper=deduper,
            manager=manager,
            redis=redis,
            kb=kb,
            metrics=metrics,
            stats=stats,
            answers=answers,
            tickets=handoff_store,
            profiles=profiles,
            desks=desks,
            handoff_gates=gates,
        )
