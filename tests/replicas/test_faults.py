"""Faults over real processes: replicas of `parley serve` share one Redis, the engine and the fake Slack.

Each check is about turns, never about timing: every turn answered exactly once, in
order within its conversation, none lost, whatever happens to the process that took it.
"""

from __future__ import annotations

import asyncio
import signal
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from adapters.slack.mrkdwn import escape
from bot.config import ContextSettings, RedisSettings
from bot.engine.launcher import free_port
from bot.store.context import RedisContextStore
from bot.turns import ConversationKey
from tests.conftest import RedisServer
from tests.replicas.conftest import deliver
from tests.slack.fake import TEAM, FakeSlack, mention, message
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.engine


def store(redis_server, replica) -> RedisContextStore:
    # The test's own reads are not what is tested, and they run while replicas and the engine
    # load both cores: a stall of the machine past redis-py's 5 s default failed one in CI.
    client = Redis.from_url(redis_server.url, socket_timeout=60)
    settings = RedisSettings(_env_file=None, url=redis_server.url, prefix=replica.env["PARLEY_REDIS_PREFIX"])
    return RedisContextStore(client, redis_settings=settings, settings=ContextSettings(_env_file=None))


async def answers(context_store: RedisContextStore, channel: str, thread: str = "") -> list[str]:
    context = await context_store.load(ConversationKey("slack", TEAM, channel, thread))
    return [escape(m.content) for m in context.messages if m.role == "assistant"]  # as Slack shows them


async def until(check, timeout: float = 300, every: float = 0.2):
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(every)
        return result


async def test_a_worker_killed_mid_answer_is_finished_by_another_with_one_message(
    replicas, fake_slack: FakeSlack, http, redis_server, engine
):
    long = {"PARLEY_LLM_MAX_TOKENS": "3000", "SLACK_MESSAGE_LIMIT": "40000"}  # seconds of answer, one message
    # The first replica's answer stalls after its first few dozen tokens, however fast the engine
    # is and however slow the machine: it is killed mid-answer, never after it has saved.
    engine_url = urlsplit(engine)
    stall = TcpProxy(engine_url.hostname or "127.0.0.1", engine_url.port or 80, free_port(), stall_after=16_384)
    await stall.start()
    try:
        first = await replicas("first", PARLEY_LLM_BASE_URL=f"http://127.0.0.1:{stall.port}/v1", **long).start()
        event = mention("C0001", "a long answer, please")
        await deliver(http, first, event)
        # The answer is on its way: posted, and edited since.
        await fake_slack.wait_for(lambda: fake_slack.calls_to("chat.update"), timeout=180)
        first.signal(signal.SIGKILL)
        await first.wait()
    finally:
        stall.flow()
        await stall.stop()
    assert await answers(store(redis_server, first), "C0001", event["ts"]) == []  # it died before saving

    second = await replicas("second", **long).start()
    contexts = store(redis_server, second)
    [answer] = await until(lambda: answers(contexts, "C0001", event["ts"]))
    await asyncio.sleep(1.0)  # anything still to come would arrive now
    [posted] = fake_slack.in_thread("C0001", event["ts"])  # one message: the second worker edited it
    assert posted.text == answer and len(answer) > 0
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert await second.metric("parley_turns_reclaimed_total") == 1


async def test_two_replicas_answer_200_turns_in_40_conversations_once_and_in_order(
    replicas, fake_slack, http, redis_server
):
    a, b = replicas("a"), replicas("b")
    await asyncio.gather(a.start(), b.start())
    channels = [f"D{c:04d}" for c in range(40)]
    # Five rounds; a load balancer alternates the replicas, and no round waits for answers.
    for round_ in range(5):
        await asyncio.gather(
            *(
                deliver(http, (a, b)[(round_ + c) % 2], message(channel, f"{channel} turn {round_}", channel_type="im"))
                for c, channel in enumerate(channels)
            )
        )
    contexts = store(redis_server, a)

    async def all_answered() -> bool:
        counts = await asyncio.gather(*(answers(contexts, channel) for channel in channels))
        return all(len(c) >= 5 for c in counts)

    await until(all_answered, timeout=600, every=0.5)
    await asyncio.sleep(1.0)
    for channel in channels:
        context = await contexts.load(ConversationKey("slack", TEAM, channel, ""))
        asked = [m.content for m in context.messages if m.role == "user"]
        assert asked == [f"{channel} turn {r}" for r in range(5)], f"{channel} out of order"
        said = [escape(m.content) for m in context.messages if m.role == "assistant"]  # as Slack shows them
        shown = [p.text for p in fake_slack.in_thread(channel, None)]
        assert shown == said, f"{channel}: each turn answered once, in order"
    # Both replicas did the work.
    assert await a.metric('parley_turns_total{outcome="answered",platform="slack"}') > 0
    assert await b.metric('parley_turns_total{outcome="answered",platform="slack"}') > 0


async def test_sigterm_finishes_or_hands_over_turns_in_flight(replicas, fake_slack, http, redis_server):
    leaving = replicas("leaving", PARLEY_LLM_MAX_TOKENS="300", PARLEY_DIALOGUE_DRAIN_TIMEOUT="1")
    staying = replicas("staying", PARLEY_LLM_MAX_TOKENS="300")
    await leaving.start()
    channels = [f"D1{c:03d}" for c in range(12)]
    await asyncio.gather(*(deliver(http, leaving, message(ch, f"{ch} question", channel_type="im")) for ch in channels))
    await fake_slack.wait_for(lambda: fake_slack.calls_to("chat.postMessage"), timeout=180)
    await staying.start()
    leaving.signal(signal.SIGTERM)
    assert await leaving.wait() == 0  # a clean exit, within its drain deadline
    contexts = store(redis_server, staying)

    async def all_answered() -> bool:
        return all(len(a) == 1 for a in await asyncio.gather(*(answers(contexts, ch) for ch in channels)))

    await until(all_answered)
    await asyncio.sleep(1.0)
    for channel in channels:
        [said] = await answers(contexts, channel)
        assert [p.text for p in fake_slack.in_thread(channel, None)] == [said]


async def test_a_redis_restart_with_50_conversations_active_loses_no_turn(replicas, fake_slack, http, tmp_path):
    redis = RedisServer(tmp_path / "redis", persistent=True)
    (tmp_path / "redis").mkdir()
    redis.start()
    try:
        replica = await replicas("only", PARLEY_REDIS_URL=redis.url, PARLEY_LLM_MAX_TOKENS="32").start()
        channels = [f"D2{c:03d}" for c in range(50)]
        await asyncio.gather(
            *(deliver(http, replica, message(ch, f"{ch} first", channel_type="im")) for ch in channels)
        )
        await fake_slack.wait_for(lambda: fake_slack.calls_to("chat.postMessage"), timeout=180)
        # Redis goes away with answers in flight, and the second round arrives while it is away:
        # Slack's deliveries get errors and are retried, as Slack retries.
        await asyncio.to_thread(redis.stop)
        second_round = asyncio.gather(
            *(deliver(http, replica, message(ch, f"{ch} second", channel_type="im")) for ch in channels)
        )
        await asyncio.sleep(2.0)
        await asyncio.to_thread(redis.start)
        retried = await second_round
        contexts = store(redis, replica)

        async def all_answered() -> bool:
            return all(len(a) == 2 for a in await asyncio.gather(*(answers(contexts, ch) for ch in channels)))

        await until(all_answered)
        await asyncio.sleep(1.0)
        for channel in channels:
            context = await contexts.load(ConversationKey("slack", TEAM, channel, ""))
            assert [m.content for m in context.messages if m.role == "user"] == [
                f"{channel} first",
                f"{channel} second",
            ]
            said = [escape(m.content) for m in context.messages if m.role == "assistant"]
            assert [p.text for p in fake_slack.in_thread(channel, None)] == said
        print(f"deliveries retried during the outage: {sum(1 for r in retried if r)} of {len(channels)}")
        assert any(retried), "the outage was not seen by any delivery"
    finally:
        redis.stop()
