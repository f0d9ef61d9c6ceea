"""`parley bench fairness`: can one heavy user starve everyone else when the engine is saturated?

L light users each send a turn every 1/r seconds; one heavy user sends `--heavy` times as many
(each in a conversation of its own, as a script or a person in many threads would, so nothing
serialises them), all through the dialogue manager, for `--seconds`. The engine's slots
(`--slots`, PARLEY_LLM_MAX_CONCURRENCY) are fewer than the load needs, so requests queue for
them. Three runs in one process, in this order: the light users alone, then with the heavy
user under first come first served (`PARLEY_LLM_FAIR_SHARE=none`), then with the fair queue
(`user`). For each, the light users' first-token time (from the moment a turn was due to its
first piece at the sink: queueing included) p50/p95, and the turns per second each side got.

The engine is a URL (a real vLLM: answers of `--max-tokens` tokens) or, by default, the built-in
stand-in (`bot/tools/standin.py`), which writes its scripted answer at a model's pace
(`--token-delay` seconds a word) and never saturates itself: the slots are the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field

from bot.config import Settings
from bot.runtime import open_runtime
from bot.tools.bench import QUESTIONS, percentile, positive
from bot.tools.standin import ScriptedEngine
from bot.turns import Outcome, Turn

ANSWER_WORDS = 24  # the stand-in's answer, in words (one streamed piece each)


def _rate(value: str) -> float:
    rate = float(value)
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--light", type=positive, default=8, help="light users (default 8)")
    parser.add_argument("--rate", type=_rate, default=1.0, help="turns per second of each light user (default 1)")
    parser.add_argument("--heavy", type=positive, default=20, help="the heavy user's rate, in light rates (default 20)")
    parser.add_argument("--seconds", type=_rate, default=10.0, help="length of each run (default 10)")
    parser.add_argument("--slots", type=positive, default=4, help="PARLEY_LLM_MAX_CONCURRENCY for the runs (default 4)")
    parser.add_argument(
        "--engine-url", help="a vLLM server's /v1 URL (default: the built-in stand-in, at --token-delay a word)"
    )
    parser.add_argument(
        "--token-delay", type=_rate, default=0.01, help="the stand-in's seconds per word (default 0.01)"
    )
    parser.add_argument("--max-tokens", type=positive, default=48, help="tokens per answer of a real engine")


@dataclass
class _Run:
    name: str
    light_ttft: list[float] = field(default_factory=list)  # seconds, queueing included
    done: dict[str, int] = field(default_factory=lambda: {"light": 0, "heavy": 0})  # turns answered in the window
    failed: int = 0


class _FirstPiece:
    """A sink that notes when the first piece of the answer arrives."""

    def __init__(self) -> None:
        self.first: float | None = None

    async def send(self, text: str) -> None:
        return None

    async def stream(self, chunks: AsyncIterable[str]) -> str:
        text = ""
        async for chunk in chunks:
            if self.first is None:
                self.first = time.perf_counter()
            text += chunk
        return text


async def _one_run(settings: Settings, args: argparse.Namespace, name: str, *, heavy: bool) -> _Run:
    run = _Run(name)
    tag = uuid.uuid4().hex[:6]
    async with open_runtime(settings) as runtime:
        # Warm-up: model discovery and connections, before anything is timed.
        await runtime.manager.handle(_turn(tag, "warm", "warm", 0), _FirstPiece())
        start = time.perf_counter()
        window_end = start + args.seconds

        async def one(user: str, channel: str, n: int, due: float) -> None:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sink = _FirstPiece()
            reply = await runtime.manager.handle(_turn(tag, user, channel, n), sink)
            if reply.outcome is not Outcome.ANSWERED or sink.first is None:
                run.failed += 1
                return
            side = "heavy" if user == "heavy" else "light"
            if side == "light":
                run.light_ttft.append(sink.first - due)
            if time.perf_counter() <= window_end:
                run.done[side] += 1

        async with asyncio.TaskGroup() as turns:
            every = 1 / args.rate
            for u in range(args.light):
                offset = u * every / args.light  # light users spread over the interval
                n = 0
                while (due := start + offset + n * every) < window_end:
                    turns.create_task(one(f"light-{u}", f"light-{u}", n, due))
                    n += 1
            if heavy:
                every_heavy = every / args.heavy
                n = 0
                while (due := start + n * every_heavy) < window_end:
                    turns.create_task(one("heavy", f"heavy-{n}", n, due))
                    n += 1
    return run


def _turn(tag: str, user: str, channel: str, n: int) -> Turn:
    return Turn(
        platform="bench",
        tenant=f"fair-{tag}",
        channel=channel,
        user=user,
        text=f"[{tag}/{channel}/{n}] {QUESTIONS[n % len(QUESTIONS)]}",
        event_id=f"{tag}-{channel}-{n}",
    )


@contextlib.asynccontextmanager
async def _engine(args: argparse.Namespace) -> AsyncIterator[str]:
    if args.engine_url:
        yield args.engine_url
        return
    standin = ScriptedEngine(" ".join(["word"] * ANSWER_WORDS), token_delay=args.token_delay, keep_requests=False)
    async with standin.serving() as url:
        yield url


async def run_fairness(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    runs: list[_Run] = []
    async with _engine(args) as url:
        extra = {**settings.llm.extra_body, "ignore_eos": True} if args.engine_url else settings.llm.extra_body
        llm = settings.llm.model_copy(
            update={"base_url": url, "max_concurrency": args.slots, "max_tokens": args.max_tokens, "extra_body": extra}
        )
        say(
            f"fairness: {args.light} light users at {args.rate:g} turns/s each, a heavy user at {args.heavy}x that, "
            f"{args.slots} engine slots, {args.seconds:g} s a run, against {url}"
        )
        for name, share, heavy in (
            ("light users alone", "user", False),
            ("+ heavy, first come first served", "none", True),
            ("+ heavy, fair queue per user", "user", True),
        ):
            update = {"llm": llm.model_copy(update={"fair_share": share})}
            runs.append(await _one_run(settings.model_copy(update=update), args, name, heavy=heavy))

    print(f"{'run':<34} {'light first token p50':>22} {'p95':>10}  {'light turns/s':>13} {'heavy turns/s':>13}")
    for run in runs:
        ttft = run.light_ttft
        print(
            f"{run.name:<34} {percentile(ttft, 0.5) * 1000:>19.0f} ms {percentile(ttft, 0.95) * 1000:>7.0f} ms  "
            f"{run.done['light'] / args.seconds:>13.1f} {run.done['heavy'] / args.seconds:>13.1f}"
            + (f"   ({run.failed} turns failed)" if run.failed else "")
        )
    alone, fifo, fair = (percentile(r.light_ttft, 0.95) for r in runs)
    print(
        f"light users' p95 with the heavy user, against alone: first come first served {fifo / alone:.1f}x, "
        f"fair queue {fair / alone:.1f}x"
    )
