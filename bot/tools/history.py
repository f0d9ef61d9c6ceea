"""`parley bench history`: long conversations, and what cutting their history does to the prefix cache.

K conversations of T turns (20 by default) run through the dialogue manager with a token budget
small enough that every conversation overflows it several times. Two ways of cutting history
back run in the same process against the same engine, in alternating rounds:

- compaction (what Parley does): once the history overflows the budget it is cut back to
  `PARLEY_CONTEXT_COMPACT_TO` of it in one step, so the prompt's start stays the same for the
  next several turns;
- a sliding window: the oldest messages go every turn, just enough to fit, so the prompt's
  start shifts on every turn once the budget is full.

It prints the prefix-cache hit rate of prompt tokens (vLLM's `/metrics`) from the third turn
on, and over all turns, for each, and the history each kept on average (what the model saw).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from contextlib import AsyncExitStack

from bot.config import Settings
from bot.runtime import open_runtime
from bot.tools.bench import CacheReading, RunResult, positive, through_parley


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", "-k", type=positive, default=8, help="concurrent conversations (default 8)")
    parser.add_argument("--turns", "-t", type=positive, default=20, help="turns per conversation (default 20)")
    parser.add_argument("--budget", type=positive, default=600, help="history tokens kept (default 600)")
    parser.add_argument("--max-tokens", type=positive, default=48, help="tokens per answer (default 48)")
    parser.add_argument("--rounds", "-r", type=positive, default=4, help="rounds of both, alternating (default 4)")


async def run_history(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    k, t = args.conversations, args.turns
    llm = settings.llm.model_copy(
        update={"max_tokens": args.max_tokens, "extra_body": {**settings.llm.extra_body, "ignore_eos": True}}
    )
    # A sliding window is compaction that keeps the whole budget: the oldest messages go, just
    # enough to fit, on every turn (`bot.store.context.compact` with a target of 1).
    ways = {
        "compaction": settings.context.compact_to,
        "sliding window": 1.0,
    }
    results: dict[str, list[RunResult]] = {name: [] for name in ways}
    async with AsyncExitStack() as stack:
        runtimes = {}
        for name, target in ways.items():
            context = settings.context.model_copy(update={"token_budget": args.budget, "compact_to": target})
            runtimes[name] = await stack.enter_async_context(
                open_runtime(settings.model_copy(update={"llm": llm, "context": context}))
            )
        say(
            f"long conversations: {k} x {t} turns, {args.max_tokens} tokens per answer, a history budget of "
            f"{args.budget} tokens, {args.rounds} rounds, against {runtimes['compaction'].llm.base_url}"
        )
        for runtime in runtimes.values():
            await through_parley(runtime, k, 1)  # warm-up: model discovery and connections
        for n in range(args.rounds):
            for name in list(ways) if n % 2 == 0 else list(reversed(ways)):
                results[name].append(await through_parley(runtimes[name], k, t))

    def rate(reading: CacheReading) -> str:
        return f"{reading.hit_rate:6.1%}" if reading.queries else "     -"

    print(f"{'history cut by':<16} {'hits, turns 3+':>15} {'all turns':>10} {'each round, 3+':>20}  prompt tokens/turn")
    for name, runs in results.items():
        late = sum((r.late for r in runs), CacheReading(0, 0, 0))
        total = sum((r.total for r in runs), CacheReading(0, 0, 0))
        per_round = " ".join(f"{r.late.hit_rate:.0%}" for r in runs)
        prompt = statistics.fmean(r.total.queries / (k * t) for r in runs)
        print(f"{name:<16} {rate(late):>15} {rate(total):>10} {per_round:>20}  {prompt:.0f}")
