"""A soak: 5,000 turns through `parley serve`'s instant path, with the process's memory watched.

The turns are `reset` in 50 DM conversations, delivered over the Events API as Slack
does: each goes through the adapter, the Redis inbox, a worker, the dialogue manager
and back out through the Slack sink, with no engine time to hide a leak behind. (Not `help`:
Slack's adapter answers that itself, without the inbox.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot import messages
from tests.replicas.conftest import deliver
from tests.slack.fake import message

pytestmark = pytest.mark.engine  # the replica needs the engine's embedder and a healthy engine to be ready

TURNS = 5000
WARM_UP = 1000
CONVERSATIONS = 50


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_memory_is_flat_over_5000_instant_turns(replicas, fake_slack, http):
    replica = await replicas("soak").start()
    assert replica.proc is not None
    pid = replica.proc.pid

    def answered() -> int:
        return sum(1 for m in fake_slack.messages if m.text == messages.RESET_DONE)

    async def run(first: int, last: int) -> None:
        gate = asyncio.Semaphore(16)

        async def one(n: int) -> None:
            async with gate:
                await deliver(http, replica, message(f"D3{n % CONVERSATIONS:03d}", "reset", channel_type="im"))

        await asyncio.gather(*(one(n) for n in range(first, last)))
        await fake_slack.wait_for(lambda: answered() >= last, timeout=600)

    samples: list[tuple[int, int]] = []
    await run(0, WARM_UP)
    samples.append((WARM_UP, rss_kib(pid)))
    for upto in range(WARM_UP + 1000, TURNS + 1, 1000):
        await run(samples[-1][0], upto)
        samples.append((upto, rss_kib(pid)))

    print("\nturns answered  RSS of the bot process")
    for turns, kib in samples:
        print(f"{turns:>14}  {kib / 1024:7.1f} MiB")
    growth = samples[-1][1] - samples[0][1]
    print(f"growth after warm-up: {growth / 1024:.1f} MiB over {TURNS - WARM_UP} turns")
    assert answered() == TURNS  # each turn answered exactly once
    # The worker acknowledges an inbox entry just after its reply is sent, so the last few
    # may still be in flight when the last answer arrives: every one must be finished soon.
    pending = await replica.metric("parley_inbox_pending")
    for _ in range(50):
        if pending == 0:
            break
        await asyncio.sleep(0.1)
        pending = await replica.metric("parley_inbox_pending")
    assert pending == 0
    # Flat: a leak of even 2 KiB a turn would add ~8 MiB over these 4,000 turns.
    assert growth < 6 * 1024
