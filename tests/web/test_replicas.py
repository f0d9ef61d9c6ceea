"""Two replicas of the web chat behind one Redis, as behind a load balancer: two runtimes in this
process, each with its own port, sharing the Redis, its key prefix and the web secret, with the
Redis inbox, so either replica's workers may answer a turn whatever replica holds the visitor's
socket. The answers must still stream live to every tab, through the Redis fan-out.

The first test needs no model (the LLM URL points nowhere, and the "model unavailable" sentence
still streams as a delta and a done frame); the second streams real answers from the engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.config import DialogueSettings
from tests.web.conftest import DEAD_LLM, FRAME_TIMEOUT, Tab, WebStack

MESSAGES = 12  # enough that both replicas' workers take some: they take turns reading the stream


def replica(stack_for: Any, name: str, llm_url: str = DEAD_LLM, **overrides: Any) -> Any:
    dialogue = DialogueSettings(_env_file=None, inbox="redis", consumer=name)
    return stack_for(llm_url, dialogue=dialogue, visitor_rate=1000, **overrides)


def turns_answered(stack: WebStack) -> int:
    """Web turns this replica's workers have handled (its own metrics registry)."""
    return int(
        sum(
            sample.value
            for metric in stack.runtime.metrics.registry.collect()
            if metric.name == "parley_turns"
            for sample in metric.samples
            if sample.name == "parley_turns_total" and sample.labels["platform"] == "web"
        )
    )


async def all_answered(replicas: dict[str, WebStack], total: int) -> dict[str, int]:
    """How many turns each replica answered, once they add up to `total` (counted after the done frame)."""
    async with asyncio.timeout(FRAME_TIMEOUT):
        while True:
            counts = {name: turns_answered(stack) for name, stack in replicas.items()}
            if sum(counts.values()) >= total:
                return counts
            await asyncio.sleep(0.05)


def assert_streamed(deltas: list[dict[str, Any]], done: dict[str, Any]) -> None:
    """The pieces arrive in order, each starting where the last ended, and add up to the answer."""
    assert deltas, "no delta before done"
    at = 0
    for delta in deltas:
        assert delta["at"] == at
        at += len(delta["text"])
    assert "".join(d["text"] for d in deltas) == done["text"] and done["text"]


def assert_once(tab: Tab, answers: list[str]) -> None:
    """Every frame of every answer reached the tab once: one done each, no delta twice."""
    assert [f["id"] for f in tab.frames if f["type"] == "done"] == answers
    deltas = [(f["id"], f["at"]) for f in tab.frames if f["type"] == "delta"]
    assert len(deltas) == len(set(deltas))


async def converse(tabs: list[Tab], n: int, tag: str) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """`n` messages from the first tab, one after another; each answer as every tab saw it live."""
    first, *others = tabs
    answers = []
    for i in range(n):
        await first.say(f"message {i}", id=f"{tag}-{i:04d}")
        ack = await first.next("ack")
        seen = [await first.answer(ack["answer"])]
        for other in others:
            assert await other.next("ack") == ack
            seen.append(await other.answer(ack["answer"]))
        assert all(s == seen[0] for s in seen), "the tabs saw different frames"
        answers.append(seen[0])
    return answers


async def test_answers_by_the_other_replicas_workers_stream_live_to_every_tab(stack_for):
    async with replica(stack_for, "replica-a") as a, replica(stack_for, "replica-b") as b:
        assert a.adapter.port != b.adapter.port
        on_a = await a.connect()
        on_b = await b.connect(on_a.token)  # the same visitor's second tab, behind the other replica
        assert on_b.visitor == on_a.visitor
        answers = await converse([on_a, on_b], MESSAGES, "replicas")
        for deltas, done in answers:
            assert_streamed(deltas, done)
        counts = await all_answered({"a": a, "b": b}, MESSAGES)
        print(f"turns answered: {counts}")
        assert counts["a"] + counts["b"] == MESSAGES
        # The visitor's tab on A got live every answer B's workers gave, and the tab on B A's.
        assert counts["a"] >= 1 and counts["b"] >= 1, counts
        ids = [done["id"] for _, done in answers]
        assert_once(on_a, ids)
        assert_once(on_b, ids)


@pytest.mark.engine
async def test_real_answers_stream_from_either_replica_and_equal_the_saved_ones(stack_for, engine):
    n = 6
    async with (
        replica(stack_for, "replica-a", engine, llm={"max_tokens": 24}) as a,
        replica(stack_for, "replica-b", engine, llm={"max_tokens": 24}) as b,
    ):
        tab = await a.connect()
        answers = await converse([tab], n, "engine")
        for deltas, done in answers:
            assert_streamed(deltas, done)
        context = await a.answered(tab.visitor, turns=n)
        assert [m.content for m in context.messages if m.role == "assistant"] == [done["text"] for _, done in answers]
        counts = await all_answered({"a": a, "b": b}, n)
        print(f"turns answered: {counts}")
        assert counts["b"] >= 1, counts  # at least one answer crossed from B's worker to A's socket
        assert_once(tab, [done["id"] for _, done in answers])
