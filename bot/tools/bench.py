"""`parley bench`: Parley against the same requests sent straight to vLLM, in one run.

K conversations of T turns run concurrently twice: once through the dialogue
manager (context store, dedupe, routing, prompt layout, LLM client: everything but
a platform), once as plain streaming HTTP requests to vLLM carrying identical
prompts. Both runs ask for exactly `--max-tokens` tokens (`ignore_eos`), and
their texts are tagged per run so neither warms the other's prefix cache. A shared
machine's speed drifts by more than the difference measured, so the pair is
repeated for several rounds, in alternating order, and medians are reported.
It prints both throughputs and their ratio, Parley's own time per turn (the
turn's time minus the time spent waiting on the engine) and the prefix-cache hit
rate of prompt tokens from vLLM's `/metrics`, overall and from the third turn on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from bot.config import Settings
from bot.llm.prompts import build_messages
from bot.runtime import Runtime, freeze_heap, open_runtime
from bot.store.context import Context, Message
from bot.turns import Outcome, Turn

QUESTIONS = (
    "How do I rotate the API keys for our staging workspace without downtime?",
    "Why does the nightly export to the data warehouse sometimes run twice?",
    "What's the difference between the team plan and the business plan for guests?",
    "Can I move a shared channel to another workspace and keep its history?",
    "Does the mobile app keep working offline during a flight?",
    "How does single sign-on work with our contractors' guest accounts?",
    "What happens to scheduled messages when their author is deactivated?",
    "How do I set up an on-call rotation that follows the sun across three offices?",
)


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", "-k", type=positive, default=8, help="concurrent conversations (default 8)")
    parser.add_argument("--turns", "-t", type=positive, default=6, help="turns per conversation (default 6)")
    parser.add_argument("--max-tokens", type=positive, default=48, help="tokens per answer (default 48)")
    parser.add_argument(
        "--rounds",
        "-r",
        type=positive,
        default=12,
        help="rounds of both runs, in alternating order; medians are reported (default 12: each order 6 times)",
    )


def _question(run: str, conv: int, turn: int) -> str:
    # A typical support question (~20 tokens), tagged so that runs and chats differ.
    return f"[{run}/{conv}/{turn}] {QUESTIONS[(conv + turn) % len(QUESTIONS)]}"


def prometheus_sum(text: str, name: str) -> float:
    """Sum of one metric over all its label sets in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class CacheReading:
    hits: float
    queries: float
    generated: float

    def __sub__(self, other: CacheReading) -> CacheReading:
        return CacheReading(self.hits - other.hits, self.queries - other.queries, self.generated - other.generated)

    def __add__(self, other: CacheReading) -> CacheReading:
        return CacheReading(self.hits + other.hits, self.queries + other.queries, self.generated + other.generated)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


async def _reading(runtime: Runtime) -> CacheReading:
    text = await runtime.llm.metrics_text()
    return CacheReading(
        prometheus_sum(text, "vllm:prefix_cache_hits_total"),
        prometheus_sum(text, "vllm:prefix_cache_queries_total"),
        prometheus_sum(text, "vllm:generation_tokens_total"),
    )


class _NullSink:
    """Consumes the stream as a platform sink would, without a platform."""

    async def send(self, text: str) -> None:
        return None

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        return "".join([c async for c in chunks])


@dataclass
class RunResult:
    name: str
    seconds: float
    early: CacheReading  # turns 1-2
    late: CacheReading  # turns 3..T
    added: list[float]

    @property
    def total(self) -> CacheReading:
        return self.early + self.late

    @property
    def throughput(self) -> float:
        return self.total.generated / self.seconds if self.seconds else 0.0


async def _phased(
    runtime: Runtime, turns: int, conversations: int, one_turn: Callable[[int, int], Awaitable[None]]
) -> tuple[float, CacheReading, CacheReading]:
    """Turns 1-2 of every conversation, a metrics reading, then turns 3..T."""

    async def conversation(conv: int, first: int, last: int) -> None:
        for t in range(first, last + 1):
            await one_turn(conv, t)

    start_reading = await _reading(runtime)
    started = time.perf_counter()
    await asyncio.gather(*(conversation(c, 1, min(2, turns)) for c in range(conversations)))
    elapsed = time.perf_counter() - started
    mid_reading = await _reading(runtime)
    started = time.perf_counter()
    if turns > 2:
        await asyncio.gather(*(conversation(c, 3, turns) for c in range(conversations)))
    elapsed += time.perf_counter() - started
    end_reading = await _reading(runtime)
    return elapsed, mid_reading - start_reading, end_reading - mid_reading


async def through_parley(runtime: Runtime, k: int, t: int) -> RunResult:
    run = f"P{uuid.uuid4().hex[:6]}"
    added: list[float] = []

    async def one_turn(conv: int, turn: int) -> None:
        reply = await runtime.manager.handle(
            Turn(
                platform="bench",
                tenant=run,
                channel=str(conv),
                user="bench",
                text=_question(run, conv, turn),
                event_id=f"{run}-{conv}-{turn}",
            ),
            _NullSink(),
        )
        if reply.outcome is not Outcome.ANSWERED:
            raise RuntimeError(f"bench turn {conv}/{turn} ended {reply.outcome}: {reply.error}")
        added.append(reply.total - reply.llm_time)

    seconds, early, late = await _phased(runtime, t, k, one_turn)
    return RunResult("parley", seconds, early, late, added)


async def _direct(
    runtime: Runtime, settings: Settings, http: aiohttp.ClientSession, k: int, t: int, max_tokens: int
) -> RunResult:
    run = f"D{uuid.uuid4().hex[:6]}"
    model = await runtime.llm.model()
    histories: dict[int, list[Message]] = {c: [] for c in range(k)}

    async def one_turn(conv: int, turn: int) -> None:
        text = _question(run, conv, turn)
        messages = build_messages(settings.context.system_prompt, Context(tuple(histories[conv])), text)
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": settings.llm.temperature,
            "stream": True,
            "ignore_eos": True,
        }
        answer = ""
        async with http.post(f"{runtime.llm.base_url}/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    for choice in json.loads(line[5:]).get("choices", ()):
                        answer += (choice.get("delta") or {}).get("content") or ""
        histories[conv] += [Message("user", text, 0), Message("assistant", answer, 0)]

    seconds, early, late = await _phased(runtime, t, k, one_turn)
    return RunResult("direct", seconds, early, late, [])


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _hit_rate(reading: CacheReading) -> str:
    return f"{reading.hit_rate:6.1%}" if reading.queries else "     -"


async def run_bench(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    k, t, rounds = args.conversations, args.turns, args.rounds
    llm = settings.llm.model_copy(
        update={"max_tokens": args.max_tokens, "extra_body": {**settings.llm.extra_body, "ignore_eos": True}}
    )
    settings = settings.model_copy(update={"llm": llm})
    directs: list[RunResult] = []
    parleys: list[RunResult] = []
    # One client for every direct run, as Parley has one: the warm-up opens its connections.
    # The same HTTP library as Parley's LLM client, so that the difference is Parley's work.
    async with (
        open_runtime(settings, say) as runtime,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.llm.total_timeout)) as http,
    ):
        freeze_heap()  # as `parley serve` does
        say(
            f"benchmarking {k} conversations x {t} turns, {args.max_tokens} tokens per answer, "
            f"{rounds} rounds, against {runtime.llm.base_url}"
        )
        # Warm-up, one turn per conversation through each path: model discovery and the
        # connection pools (to vLLM and to Redis) are set up before anything is timed.
        await _direct(runtime, settings, http, k, 1, args.max_tokens)
        await through_parley(runtime, k, 1)
        for n in range(rounds):
            # The order alternates, so that neither path always runs on a warmer engine.
            for path in ("direct", "parley") if n % 2 == 0 else ("parley", "direct"):
                if path == "direct":
                    directs.append(await _direct(runtime, settings, http, k, t, args.max_tokens))
                else:
                    parleys.append(await through_parley(runtime, k, t))
    ratios = [p.throughput / d.throughput if d.throughput else 0.0 for d, p in zip(directs, parleys, strict=True)]
    added = [a for result in parleys for a in result.added]

    def spread(values: list[float], unit: str = "") -> str:
        return f"median {statistics.median(values):8.1f}{unit}  (min {min(values):.1f}, max {max(values):.1f})"

    print(
        f"turns per run              {k * t} ({k} conversations x {t} turns, {args.max_tokens} tokens each), "
        f"{rounds} rounds of both"
    )
    print(f"throughput direct          {spread([r.throughput for r in directs], ' tokens/s')}")
    print(f"throughput through Parley  {spread([r.throughput for r in parleys], ' tokens/s')}")
    print(
        f"throughput ratio           median {statistics.median(ratios):8.3f}  "
        f"(Parley / direct in each round: {' '.join(f'{r:.3f}' for r in ratios)})"
    )
    p50, p99 = (percentile(added, q) * 1000 for q in (0.5, 0.99))
    print(
        f"Parley time per turn       p50 {p50:.2f} ms   p99 {p99:.2f} ms   "
        f"mean {statistics.fmean(added) * 1000:.2f} ms   ({len(added)} turns)"
    )
    for name, results in (("direct", directs), ("parley", parleys)):
        early = sum((r.early for r in results), CacheReading(0, 0, 0))
        late = sum((r.late for r in results), CacheReading(0, 0, 0))
        print(
            f"prefix-cache hit rate {name:<7} all turns {_hit_rate(early + late)}   "
            f"turns 1-2 {_hit_rate(early)}   turns 3+ {_hit_rate(late)}"
        )
