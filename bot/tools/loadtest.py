"""`parley loadtest`: what one bot process can carry, measured on the real serving path.

`parley serve` runs as a process of its own with the web chat adapter, exactly as deployed
(its inbox, dialogue workers, Redis, routing, moderation and web sink), and this process
plays K visitors over the web chat's real WebSocket protocol (`adapters/web/normalize.py`),
T turns each, against an engine: a URL (a real vLLM), or the built-in stand-in
(`bot/tools/standin.py`, `--standin`), which answers at once and stamps when each request
arrived and when it wrote the first token, on the host's monotonic clock. With those stamps
a turn splits into Parley's part and the engine's:

    sent ─ Parley in ─> engine received ─ engine ─> first token ─ Parley out ─> first delta at the client

and "Parley added" is in + out: what a turn waits for Parley itself. Against a real engine,
which stamps nothing, `--rounds` alternates rounds of the same load through Parley and sent
straight to the engine (the same questions, answer length and history growth) and prints the
throughput ratio, each path's time to the first token, and vLLM's prefix-cache hits. The clients and the
stand-in share this process's event loop, so a busy loop here makes Parley look slower,
never faster. Parley's CPU is read from /proc for its process alone (Linux).

`--sweep` offers turns at rising rates (open loop: a turn starts on schedule whenever a
visitor is free) for a few seconds each, over settings that change Parley's work per turn:
history length, routing (the tenant's handlers: chat alone is never routed), moderation, and
the Redis Stream inbox instead of the in-process queue; it prints one table and, for each
setting, the highest rate at which Parley's added p99 stayed under 10 ms; `--plot` draws it
(matplotlib, the `plot` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

from bot.config import Settings
from bot.engine.launcher import free_port
from bot.errors import ConfigError, ParleyError
from bot.tools.bench import QUESTIONS, percentile, positive, prometheus_sum
from bot.tools.standin import ScriptedEngine, Streamed

TARGET_P99 = 0.010  # seconds: Parley's own share of a turn that the sweep looks for
T = TypeVar("T")
_TAG = re.compile(r"zq[a-z]{10}")  # marks each turn's text, so the stand-in's stamps find their turn


class LoadTestFailed(ParleyError):
    """Parley could not be started or driven; the log says why."""


def _rates(value: str) -> list[float]:
    try:
        rates = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of turns per second: {value!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return sorted(rates)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visitors", "-k", type=positive, default=8, help="concurrent web visitors (default 8)")
    parser.add_argument("--turns", "-t", type=positive, default=6, help="turns per visitor (default 6)")
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="H",
        help="turns each visitor has before the measured ones (default 0)",
    )
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument(
        "--standin", action="store_true", help="answer with the built-in stand-in (the default without an engine URL)"
    )
    engine.add_argument("--engine-url", metavar="URL", help="a running vLLM's /v1 URL (default: PARLEY_LLM_BASE_URL)")
    parser.add_argument("--answer-words", type=positive, default=16, help="the stand-in's answer length (default 16)")
    parser.add_argument(
        "--token-delay", type=float, default=0.0, metavar="S", help="the stand-in's seconds per word (default 0)"
    )
    parser.add_argument("--max-tokens", type=positive, default=48, help="tokens per answer from a real engine")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="with an engine URL: rounds through Parley and straight to the engine, alternating, for "
        "the throughput ratio (default 2; 0: none)",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="Redis for Parley (default: PARLEY_REDIS_URL, else a private redis-server)"
    )
    parser.add_argument("--redis-inbox", action="store_true", help="the Redis Stream inbox instead of the queue")
    parser.add_argument("--sweep", action="store_true", help="then the capacity sweep over rates and settings")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=_rates("10,25,50,100,150,200"),
        help="offered turns per second of the sweep (default 10,25,50,100,150,200)",
    )
    parser.add_argument("--step-seconds", type=float, default=5.0, help="seconds per rate in the sweep (default 5)")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="with --sweep: also draw Parley's added p50 and p99 against the offered rate as a PNG "
        "(needs matplotlib: pip install 'parley[plot]')",
    )


# -- one visitor: the widget's protocol ---------------------------------------------------------


@dataclass
class TurnTiming:
    tag: str
    sent: float
    acked: float | None = None
    first_delta: float | None = None
    done: float | None = None
    error: str | None = None


class Visitor:
    """One browser tab: `hello`, then one message at a time, read to its `done`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, number: int) -> None:
        self._ws = ws
        self._number = number
        self._turns = 0

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, number: int) -> Visitor:
        ws = await http.ws_connect(url, autoping=True, max_msg_size=0)
        await ws.send_str(json.dumps({"type": "hello", "token": None}))
        visitor = cls(ws, number)
        await visitor._frame("welcome")
        return visitor

    async def aclose(self) -> None:
        await self._ws.close()

    async def _frame(self, *types: str) -> dict[str, object]:
        while True:
            msg = await self._ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"the socket ended: {msg.type.name}")
            frame = json.loads(msg.data)
            if not types or frame.get("type") in types:
                return frame

    async def turn(self, timeout: float = 120.0) -> TurnTiming:
        self._turns += 1
        tag = "zq" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))
        text = f"{tag} {QUESTIONS[(self._number + self._turns) % len(QUESTIONS)]}"
        timing = TurnTiming(tag, time.monotonic())
        await self._ws.send_str(json.dumps({"type": "message", "id": f"m{tag}", "text": text}))
        answer: object = None
        try:
            async with asyncio.timeout(timeout):
                while timing.done is None:
                    frame = await self._frame("ack", "delta", "done", "message", "error")
                    now = time.monotonic()
                    kind = frame["type"]
                    if kind == "ack":
                        timing.acked, answer = now, frame["answer"]
                    elif kind == "delta" and frame.get("id") == answer:
                        timing.first_delta = timing.first_delta or now
                    elif kind == "done" and frame.get("id") == answer:
                        timing.done = now
                    elif kind == "error" or (kind == "message" and frame.get("reply_to") == answer):
                        timing.error = f"{kind}: {str(frame.get('code') or frame.get('text'))[:60]}"
                        return timing
        except TimeoutError:
            timing.error = f"no answer within {timeout:.0f} s"
        return timing


# -- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """One measured run: the turns, how long it took, Parley's CPU and inbox depth meanwhile."""

    turns: list[TurnTiming]
    seconds: float
    cpu_seconds: float | None
    loop_cpu_seconds: float | None  # the main thread's: the event loop, where turns are handled
    depths: list[float] = field(default_factory=list)
    streams: dict[str, list[Streamed]] = field(default_factory=dict)

    @property
    def answered(self) -> list[TurnTiming]:
        return [t for t in self.turns if t.error is None and t.done is not None]

    @property
    def errors(self) -> list[str]:
        return [t.error for t in self.turns if t.error is not None]

    def acks(self) -> list[float]:
        return [t.acked - t.sent for t in self.answered if t.acked is not None]

    def first_deltas(self) -> list[float]:
        return [t.first_delta - t.sent for t in self.answered if t.first_delta is not None]

    def split(self) -> tuple[list[float], list[float]]:
        """Parley in (sent -> engine received) and out (engine first token -> first delta), per turn."""
        ins, outs = [], []
        for t in self.answered:
            if t.first_delta is None:
                continue
            # A speculated answer that routing dropped has an earlier stream; the one answered came last.
            seen = [s for s in self.streams.get(t.tag, ()) if s.first_token <= t.first_delta]
            if seen:
                ins.append(seen[-1].received - t.sent)
                outs.append(t.first_delta - seen[-1].first_token)
        return ins, outs

    def added(self) -> list[float]:
        ins, outs = self.split()
        return [a + b for a, b in zip(ins, outs, strict=True)]

    @property
    def rate(self) -> float:
        return len(self.answered) / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_turn(self) -> float | None:
        return self.cpu_seconds / len(self.answered) if self.cpu_seconds is not None and self.answered else None

    @property
    def loop_cpu_per_turn(self) -> float | None:
        loop = self.loop_cpu_seconds
        return loop / len(self.answered) if loop is not None and self.answered else None


def _ms(values: Sequence[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.2f} ms" if values else "-"


def print_figures(figures: Figures, *, stamped: bool) -> None:
    errors = figures.errors
    print(
        f"turns                      {len(figures.answered)} answered, {len(errors)} errors, "
        f"{figures.rate:.1f} turns/s over {figures.seconds:.1f} s"
    )
    for error in sorted(set(errors))[:5]:
        print(f"  error ({errors.count(error)}x): {error}")
    acks, firsts = figures.acks(), figures.first_deltas()
    print(f"ack                        p50 {_ms(acks, 0.5)}   p99 {_ms(acks, 0.99)}")
    print(f"first delta after sending  p50 {_ms(firsts, 0.5)}   p99 {_ms(firsts, 0.99)}")
    if stamped:
        ins, outs = figures.split()
        added = figures.added()
        print(f"Parley in  (sent -> engine)           p50 {_ms(ins, 0.5)}   p99 {_ms(ins, 0.99)}")
        print(f"Parley out (first token -> delta)     p50 {_ms(outs, 0.5)}   p99 {_ms(outs, 0.99)}")
        print(f"Parley added (in + out)               p50 {_ms(added, 0.5)}   p99 {_ms(added, 0.99)}")
    else:
        print("Parley in/out/added        - (needs the stand-in's stamps: --standin)")
    cpu, loop = figures.cpu_per_turn, figures.loop_cpu_per_turn
    if cpu is not None and loop is not None:
        print(
            f"Parley CPU per turn        {cpu * 1000:.2f} ms ({figures.cpu_seconds:.2f} s of CPU): event loop "
            f"{loop * 1000:.2f} ms, other threads (embedder, executor) {(cpu - loop) * 1000:.2f} ms"
        )
    else:
        print("Parley CPU per turn        - (needs Linux /proc)")
    depths = figures.depths
    if depths:
        print(f"inbox depth                max {max(depths):.0f}, mean {sum(depths) / len(depths):.1f}")


# -- the same load straight to the engine -----------------------------------------------------------


async def engine_model(http: aiohttp.ClientSession, engine_url: str) -> str:
    """The engine's model; asked first, so that a load test against an engine that is down
    says so at once instead of waiting for `parley serve` to become ready."""
    try:
        async with http.get(f"{engine_url}/models") as response:
            response.raise_for_status()
            return str((await response.json())["data"][0]["id"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError) as exc:
        raise LoadTestFailed(f"the engine at {engine_url} does not answer /models: {exc!r}") from None


@dataclass
class EngineRound:
    """One round's figures as the engine saw them."""

    rate: float  # turns per second
    first_tokens: list[float]  # seconds from sending to the first token (direct rounds only)
    cache_hits: float
    cache_queries: float
    generated: float  # tokens the engine generated in the round (Parley's routing and dropped answers too)


class Direct:
    """K conversations of T turns sent straight to the engine, each turn once the last is read,
    as visitors send them through Parley: the same questions, answer length and system prompt,
    each conversation's history growing as Parley's would."""

    def __init__(self, http: aiohttp.ClientSession, engine_url: str, model: str, system_prompt: str) -> None:
        self._http, self._url, self._model, self._system = http, engine_url, model, system_prompt
        self._root = engine_url.removesuffix("/v1")
        self._long = aiohttp.ClientTimeout(total=None, sock_read=120)  # an answer on a busy engine

    async def counters(self) -> tuple[float, float, float]:
        """vLLM's prefix-cache hits and queries and its generated tokens so far."""
        async with self._http.get(f"{self._root}/metrics") as response:
            text = await response.text()
        return (
            prometheus_sum(text, "vllm:prefix_cache_hits_total"),
            prometheus_sum(text, "vllm:prefix_cache_queries_total"),
            prometheus_sum(text, "vllm:generation_tokens_total"),
        )

    async def counted(self, run: Awaitable[T]) -> tuple[T, tuple[float, float, float]]:
        """What `run` returns, and how far the engine's counters (`counters`) moved meanwhile."""
        before = await self.counters()
        result = await run
        after = await self.counters()
        return result, (after[0] - before[0], after[1] - before[1], after[2] - before[2])

    async def round(self, conversations: int, turns: int, max_tokens: int) -> EngineRound:
        first_tokens: list[float] = []
        rate, counts = await self.counted(self._round(conversations, turns, max_tokens, first_tokens))
        return EngineRound(rate, first_tokens, *counts)

    async def _round(self, conversations: int, turns: int, max_tokens: int, first_tokens: list[float]) -> float:
        run = "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))

        async def conversation(n: int) -> None:
            messages = [{"role": "system", "content": self._system}]
            for t in range(1, turns + 1):
                text = f"zq{run}{n:04d} {QUESTIONS[(n + t) % len(QUESTIONS)]}"
                messages.append({"role": "user", "content": text})
                body = {
                    "model": self._model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "stream": True,
                    "ignore_eos": True,
                }
                sent, first, answer = time.monotonic(), None, list[str]()
                async with self._http.post(f"{self._url}/chat/completions", json=body, timeout=self._long) as response:
                    response.raise_for_status()
                    async for line in response.content:
                        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                            continue
                        for choice in json.loads(line[5:]).get("choices", ()):
                            if piece := (choice.get("delta") or {}).get("content"):
                                first = first or time.monotonic()
                                answer.append(piece)
                if first is not None:
                    first_tokens.append(first - sent)
                messages.append({"role": "assistant", "content": "".join(answer)})

        started = time.monotonic()
        await asyncio.gather(*(conversation(n) for n in range(conversations)))
        return conversations * turns / (time.monotonic() - started)


async def compare_direct(
    load: Load, direct: Direct, args: argparse.Namespace, say: Callable[[str], None]
) -> tuple[list[EngineRound], list[EngineRound], list[float]]:
    """`args.rounds` rounds each way, alternating which goes first; returns the direct rounds,
    the rounds through Parley and Parley's times from sending to the first delta."""
    directs: list[EngineRound] = []
    parleys: list[EngineRound] = []
    firsts: list[float] = []
    for n in range(args.rounds):
        for path in ("parley", "direct") if n % 2 == 0 else ("direct", "parley"):
            say(f"round {n + 1} of {args.rounds}: {path}...")
            if path == "direct":
                directs.append(await direct.round(args.visitors, args.turns, args.max_tokens))
                continue
            visitors = await load.visitors(args.visitors, 0)  # new conversations, as the direct side's
            figures, counts = await direct.counted(load.closed(visitors, args.turns))
            await asyncio.gather(*(v.aclose() for v in visitors))
            if errors := figures.errors:
                raise LoadTestFailed(f"a round through Parley had {len(errors)} errors: {errors[0]}")
            parleys.append(EngineRound(figures.rate, [], *counts))
            firsts += figures.first_deltas()
    return directs, parleys, firsts


def print_comparison(
    directs: list[EngineRound], parleys: list[EngineRound], firsts: list[float], *, turns: int
) -> None:
    """`turns`: the turns of all the rounds of one path."""
    ratios = [p.rate / d.rate for p, d in zip(parleys, directs, strict=True)]
    print(
        f"throughput ratio           median {statistics.median(ratios):.3f} (Parley / direct turns/s in each round: "
        f"{' '.join(f'{r:.3f}' for r in ratios)}); direct {statistics.median(d.rate for d in directs):.1f}, "
        f"through Parley {statistics.median(p.rate for p in parleys):.1f} turns/s"
    )
    direct_firsts = [t for d in directs for t in d.first_tokens]
    print(
        f"first token, direct        p50 {_ms(direct_firsts, 0.5)}   p99 {_ms(direct_firsts, 0.99)}   "
        f"(first delta through Parley p50 {_ms(firsts, 0.5)}   p99 {_ms(firsts, 0.99)})"
    )
    for name, rounds in (("direct", directs), ("through Parley", parleys)):
        hits, queries = sum(r.cache_hits for r in rounds), sum(r.cache_queries for r in rounds)
        rate = f"{hits / queries:.1%}" if queries else "- (no vLLM counters)"
        print(
            f"engine, {name:<15}    prefix-cache hits {rate} of prompt tokens, "
            f"{sum(r.generated for r in rounds) / turns:.1f} tokens generated a turn"
        )


# -- Parley as a process of its own ---------------------------------------------------------------


def process_cpu(pid: int, thread: int | None = None) -> float | None:
    """User plus system CPU seconds of process `pid` (all its threads), or of one of its
    threads (the event loop's is the main thread: `thread=pid`), from /proc."""
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spent(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


@dataclass(frozen=True)
class Variant:
    """Settings that change Parley's work per turn."""

    name: str
    routing: bool = True
    moderation: bool = True
    redis_inbox: bool = False
    history: int = 0


def tenants_file(folder: Path, variant: Variant) -> Path:
    handlers = '["chat", "qa", "translate"]' if variant.routing else '["chat"]'  # chat alone is never routed
    moderation = (
        ""
        if variant.moderation
        else '[default.moderation]\nprofanity = "off"\npersonal_data = "off"\nllm_check = false\ncheck_output = false\n'
    )
    path = folder / f"tenants-{variant.name.replace(' ', '-')}.toml"
    path.write_text(f"[default]\nhandlers = {handlers}\n{moderation}")
    return path


class ParleyProcess:
    """`parley serve` with the web chat, as a child process; `serving()` starts and stops it."""

    def __init__(self, *, env_file: str, engine_url: str, redis_url: str | None, workdir: Path) -> None:
        self._env_file = env_file
        self._engine_url = engine_url
        self._redis_url = redis_url
        self._workdir = workdir
        self.web_port = self.ops_port = 0
        self.pid = 0

    def env(self, variant: Variant, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SLACK_BOT_TOKEN", "DISCORD_TOKEN", "SLACK_APP_TOKEN")}
        env.update(
            {
                "PARLEY_LOG_LEVEL": "WARNING",
                "PARLEY_LLM_BASE_URL": self._engine_url,
                "PARLEY_WEB_ENABLED": "true",
                "PARLEY_WEB_HOST": "127.0.0.1",
                "PARLEY_WEB_PORT": str(self.web_port),
                "PARLEY_WEB_SECRET": secrets.token_hex(32),
                # One host plays every visitor: its address would trip the per-IP limit at once.
                "PARLEY_WEB_IP_RATE": "100000000",
                "PARLEY_WEB_VISITOR_RATE": "100000000",
                "PARLEY_OPS_HOST": "127.0.0.1",
                "PARLEY_OPS_PORT": str(self.ops_port),
                "PARLEY_DIALOGUE_INBOX": "redis" if variant.redis_inbox else "memory",
                "PARLEY_TENANTS_FILE": str(tenants_file(self._workdir, variant)),
                "PARLEY_REDIS_PREFIX": f"lt{secrets.token_hex(4)}",
                **extra,
            }
        )
        if self._redis_url:
            env["PARLEY_REDIS_URL"] = self._redis_url
        return env

    @asynccontextmanager
    async def serving(self, variant: Variant, extra: dict[str, str], say: Callable[[str], None]) -> AsyncIterator[None]:
        self.web_port, self.ops_port = free_port(), free_port()
        log_path = self._workdir / f"parley-{self.web_port}.log"
        cmd = [sys.executable, "-m", "bot.tools.cli", "--env-file", self._env_file, "serve"]
        say(f"starting parley serve ({variant.name}; log: {log_path})...")
        with open(log_path, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(variant, extra)
            )
        self.pid = proc.pid
        try:
            await self._wait_ready(proc, log_path)
            yield
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    async def _wait_ready(self, proc: asyncio.subprocess.Process, log_path: Path, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                    raise LoadTestFailed(f"parley serve exited with {proc.returncode}: {' | '.join(tail)}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{self.ops_port}/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise LoadTestFailed(f"parley serve was not ready within {timeout:.0f} s (see {log_path})")

    async def depth(self, http: aiohttp.ClientSession) -> float | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"http://127.0.0.1:{self.ops_port}/metrics") as response:
                return prometheus_sum(await response.text(), "parley_inbox_depth")
        return None


# -- load ---------------------------------------------------------------------------------------


class Load:
    """Visitors against one running Parley, with its CPU and inbox depth read around each run."""

    def __init__(self, parley: ParleyProcess, http: aiohttp.ClientSession, standin: ScriptedEngine | None) -> None:
        self._parley = parley
        self._http = http
        self._standin = standin

    async def visitors(self, count: int, history: int) -> list[Visitor]:
        url = f"ws://127.0.0.1:{self._parley.web_port}/ws"
        visitors = await asyncio.gather(*(Visitor.connect(self._http, url, n) for n in range(count)))

        async def earlier_turns(visitor: Visitor) -> None:
            for _ in range(history):
                await visitor.turn()

        await asyncio.gather(*(earlier_turns(v) for v in visitors))  # not measured
        return list(visitors)

    @asynccontextmanager
    async def measured(self, turns: list[TurnTiming]) -> AsyncIterator[list[Figures]]:
        """Yields a list that holds the run's figures once the block has ended."""
        out: list[Figures] = []
        depths: list[float] = []

        async def sample() -> None:
            while True:
                if (depth := await self._parley.depth(self._http)) is not None:
                    depths.append(depth)
                await asyncio.sleep(0.2)

        if self._standin is not None:
            self._standin.streamed.clear()
        pid = self._parley.pid
        cpu_before, loop_before = process_cpu(pid), process_cpu(pid, pid)
        started = time.monotonic()
        sampler = asyncio.create_task(sample())
        try:
            yield out
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        seconds = time.monotonic() - started
        cpu = _spent(cpu_before, process_cpu(pid))
        loop = _spent(loop_before, process_cpu(pid, pid))
        streams: dict[str, list[Streamed]] = {}
        for stream in self._standin.streamed if self._standin is not None else ():
            if match := _TAG.search(stream.last):
                streams.setdefault(match.group(), []).append(stream)
        out.append(Figures(turns, seconds, cpu, loop, depths, streams))

    async def closed(self, visitors: list[Visitor], turns: int) -> Figures:
        """Every visitor sends its next message as soon as the last one is answered."""
        timings: list[TurnTiming] = []

        async def visit(visitor: Visitor) -> None:
            for _ in range(turns):
                timings.append(await visitor.turn())

        async with self.measured(timings) as figures:
            await asyncio.gather(*(visit(v) for v in visitors))
        return figures[0]

    async def offered(self, visitors: list[Visitor], rate: float, seconds: float) -> Figures:
        """Open loop: a turn is due every 1/rate s and goes to a free visitor; with none free it
        is not offered (the achieved rate shows it)."""
        timings: list[TurnTiming] = []
        idle = list(visitors)

        async def one(visitor: Visitor) -> None:
            try:
                timings.append(await visitor.turn())
            finally:
                idle.append(visitor)

        async with self.measured(timings) as figures, asyncio.TaskGroup() as tg:
            start = time.monotonic()
            for n in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                if idle:
                    tg.create_task(one(idle.pop()))
        return figures[0]


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str | None]:
    """A redis-server of the load test's own on a free port, when the binary is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Row:
    variant: Variant
    rate: float
    figures: Figures


def print_sweep(rows: list[Row]) -> None:
    print()
    print(
        f"{'setting':<16}{'history':>8}{'offered/s':>10}{'achieved/s':>11}{'ack p99':>10}"
        f"{'added p50':>11}{'added p99':>11}{'CPU/turn':>10}{'loop CPU':>10}{'inbox max':>10}{'errors':>8}"
    )
    for row in rows:
        f = row.figures
        added = f.added()
        cpu = f.cpu_per_turn
        print(
            f"{row.variant.name:<16}{row.variant.history:>8}{row.rate:>10.0f}{f.rate:>11.1f}"
            f"{percentile(f.acks(), 0.99) * 1000:>8.2f}ms{percentile(added, 0.5) * 1000:>9.2f}ms"
            f"{percentile(added, 0.99) * 1000:>9.2f}ms"
            + (f"{cpu * 1000:>8.2f}ms" if cpu is not None else f"{'-':>10}")
            + (f"{loop * 1000:>8.2f}ms" if (loop := f.loop_cpu_per_turn) is not None else f"{'-':>10}")
            + f"{max(f.depths, default=0):>10.0f}{len(f.errors):>8}"
        )
    print()
    print(f"capacity: the highest offered rate with Parley's added p99 under {TARGET_P99 * 1000:.0f} ms, all offered")
    for name in dict.fromkeys(row.variant.name for row in rows):
        ok = [r.rate for r in rows if r.variant.name == name and _within_target(r)]
        print(f"  {name:<16}{f'{max(ok):.0f} turns/s' if ok else 'none of the rates tried'}")


def _within_target(row: Row) -> bool:
    f = row.figures
    offered = int(row.rate * (f.seconds or 1))
    return (
        not f.errors
        and bool(f.added())
        and percentile(f.added(), 0.99) < TARGET_P99
        and len(f.turns) >= 0.95 * offered  # every due turn found a free visitor
    )


def _matplotlib() -> None:
    """Fails before a sweep of minutes, not after it, when the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401  # only `--plot` needs it: the bot itself does not
    except ImportError:
        raise ConfigError("--plot", "needs matplotlib: pip install 'parley[plot]'") from None


def plot_sweep(rows: list[Row], path: Path) -> None:
    """The sweep as a picture (the README's): Parley's added p50 and p99 against the offered
    rate, a line per setting, with the 10 ms target, so replicas can be sized at a glance."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no pyplot state
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    names = list(dict.fromkeys(row.variant.name for row in rows))
    for ax, q, label in ((axes[0], 0.5, "p50"), (axes[1], 0.99, "p99")):
        for name in names:
            points = [(r.rate, percentile(r.figures.added(), q) * 1000) for r in rows if r.variant.name == name]
            points = [(x, y) for x, y in points if y > 0]  # not NaN: a step with no stamped turn has no figure
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.axhline(TARGET_P99 * 1000, color="grey", linestyle="--", label=f"{TARGET_P99 * 1000:.0f} ms target")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(FixedLocator([1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]))
        ax.yaxis.set_major_formatter(ScalarFormatter())  # 20, not 2x10^1
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xticks(sorted({row.rate for row in rows}))
        ax.set_xlabel("offered turns/s")
        ax.set_title(f"added {label}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("Parley's own time per turn (ms, log)")
    axes[1].legend(loc="upper left", fontsize="small")
    figure.suptitle(
        f"parley loadtest --standin --sweep: Parley's added time against offered load, {os.cpu_count()} cores"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


SWEEP = (
    Variant("base"),
    Variant("history 20", history=20),
    Variant("routing off", routing=False),
    Variant("moderation off", moderation=False),
    Variant("redis inbox", redis_inbox=True),
)


async def run_loadtest(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> int:
    engine_url = None if args.standin else (args.engine_url or settings.llm.base_url)
    if args.history < 0:
        raise ConfigError("--history", "must be 0 or more")
    if args.rounds < 0:
        raise ConfigError("--rounds", "must be 0 or more")
    if args.sweep and engine_url is not None:
        raise ConfigError("--sweep", "the capacity sweep runs against the stand-in: add --standin")
    if args.plot is not None:
        if not args.sweep:
            raise ConfigError("--plot", "draws the sweep: add --sweep")
        _matplotlib()
    extra: dict[str, str] = {}
    if engine_url is not None:
        # A real model: answers of a known length, as `parley bench` asks for.
        extra = {"PARLEY_LLM_MAX_TOKENS": str(args.max_tokens), "PARLEY_LLM_EXTRA_BODY": '{"ignore_eos": true}'}
    standin = (
        None
        if engine_url
        else ScriptedEngine(" ".join(["word"] * args.answer_words), token_delay=args.token_delay, keep_requests=False)
    )
    with tempfile.TemporaryDirectory(prefix="parley-loadtest-") as tmp:
        async with AsyncExitStack() as stack:
            workdir = Path(tmp)
            redis_url = args.redis or settings.redis.url or stack.enter_context(private_redis(workdir))
            if standin is not None:
                engine_url = await stack.enter_async_context(standin.serving())
            assert engine_url is not None
            http = await stack.enter_async_context(
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=10),
                    connector=aiohttp.TCPConnector(limit=0),  # a socket per visitor, however many
                )
            )
            direct = None
            if standin is None and args.rounds:
                model = await engine_model(http, engine_url)
                direct = Direct(http, engine_url, model, settings.context.system_prompt)
            elif standin is None:
                await engine_model(http, engine_url)
            parley = ParleyProcess(env_file=args.env_file, engine_url=engine_url, redis_url=redis_url, workdir=workdir)
            load = Load(parley, http, standin)
            engine_name = (
                engine_url
                if standin is None
                else f"the stand-in ({args.answer_words} words, {args.token_delay * 1000:.0f} ms each)"
            )
            variant = Variant("as configured", redis_inbox=args.redis_inbox, history=args.history)
            async with parley.serving(variant, extra, say):
                visitors = await load.visitors(args.visitors, args.history)
                await load.closed(visitors, 3)  # warm-up: connections, first-use paths (the embedder's above all)
                say(f"{args.visitors} visitors x {args.turns} turns over the web chat against {engine_name}...")
                figures = await load.closed(visitors, args.turns)
                await asyncio.gather(*(v.aclose() for v in visitors))
                comparison = await compare_direct(load, direct, args, say) if direct is not None else None
            print(
                f"loadtest: {args.visitors} visitors x {args.turns} turns (history {args.history}) over the web chat's "
                f"WebSocket, engine {engine_name}, {'Redis' if args.redis_inbox else 'in-process'} inbox, "
                f"Redis {'at ' + redis_url if redis_url else 'none'}"
            )
            print_figures(figures, stamped=standin is not None)
            if comparison is not None:
                print_comparison(*comparison, turns=args.rounds * args.visitors * args.turns)
            if args.sweep:
                rows = await _sweep(load, parley, args, say, redis=redis_url is not None)
                print_sweep(rows)
                if args.plot is not None:
                    plot_sweep(rows, args.plot)
                    say(f"plot: {args.plot}")
    return 0 if not figures.errors else 1


async def _sweep(
    load: Load, parley: ParleyProcess, args: argparse.Namespace, say: Callable[[str], None], *, redis: bool
) -> list[Row]:
    rows: list[Row] = []
    variants = [v for v in SWEEP if redis or not v.redis_inbox]
    if not redis:
        say("no Redis (no --redis, PARLEY_REDIS_URL or redis-server): the Redis inbox row is left out")
    restart = [v for v in variants if v.history == 0]
    for variant in restart:
        async with parley.serving(variant, {}, say):
            # A fresh process's first turns pay for first use (the embedder's first calls above
            # all: measured, ~180 ms of CPU a turn in the first seconds against ~10 ms after).
            warm = await load.visitors(8, 0)
            await load.closed(warm, 10)
            await asyncio.gather(*(v.aclose() for v in warm))
            same_process = [variant] + ([v for v in variants if v.history] if variant.name == "base" else [])
            for each in same_process:
                for rate in args.rates:
                    # Enough free visitors for ~0.5 s of turns, so that the pool is no limit but Parley.
                    try:
                        visitors = await load.visitors(int(rate * 0.5) + 8, each.history)
                    except (ConnectionError, aiohttp.ClientError, TimeoutError) as exc:
                        # The step is not run, and said. (Once: redis-py's pool failing Parley's
                        # 101st command at once closed visitors at hello; see bot/runtime.py.)
                        say(f"{each.name}: {rate:.0f} turns/s not run: visitors could not connect ({exc})")
                        break
                    await load.offered(visitors, rate, min(1.0, args.step_seconds))  # warm-up at this rate
                    say(f"{each.name}: {rate:.0f} turns/s for {args.step_seconds:.0f} s...")
                    row = Row(each, rate, await load.offered(visitors, rate, args.step_seconds))
                    await asyncio.gather(*(v.aclose() for v in visitors))
                    rows.append(row)
                    # Saturated: higher rates tell nothing more. By p50, not p99: on a shared
                    # machine one stall at 10 turns/s (30 turns) is the p99, and ended a row there.
                    if row.figures.rate < 0.8 * rate or percentile(row.figures.added(), 0.5) > 5 * TARGET_P99:
                        break
    return rows
