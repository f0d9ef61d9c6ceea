"""Parley's own metrics: ack latency, dedupe hits, the inbox gauges, platform 429s and 5xx."""

import aiohttp
import pytest
from aiohttp import web

from bot.errors import InboxFull
from bot.ops.metrics import Metrics, TimedInbox
from bot.store.inbox import MemoryInbox
from bot.turns import ConversationKey, Outcome, Reply, Turn


def turn(platform: str, event_id: str = "E1") -> Turn:
    return Turn(platform=platform, tenant="T", channel="C", user="U", text="hi", event_id=event_id)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_timed_inbox_times_each_put_by_platform_and_delegates_the_rest():
    metrics = Metrics()
    inbox = MemoryInbox(maxsize=2)
    timed = TimedInbox(inbox, metrics)
    await timed.put(turn("slack", "1"))
    await timed.put(turn("discord", "2"))
    with pytest.raises(InboxFull):
        await timed.put(turn("slack", "3"))  # a refusal is part of the wait, too
    assert sample(metrics, "parley_ack_seconds_count", platform="slack") == 2
    assert sample(metrics, "parley_ack_seconds_count", platform="discord") == 1
    assert 0 < sample(metrics, "parley_ack_seconds_sum", platform="slack") < 1
    assert len(timed) == 2 and timed.pending == inbox.pending
    assert (await timed.get()).turn.event_id == "1"
    await timed.close()
    assert (await timed.get()).turn.event_id == "2"


def test_duplicates_are_counted_as_dedupe_hits():
    metrics = Metrics()
    key = ConversationKey("slack", "T", "C")
    metrics.observe(turn("slack"), Reply(key, "E1", Outcome.ANSWERED, total=0.1))
    metrics.observe(turn("slack"), Reply(key, "E1", Outcome.DUPLICATE, total=0.001))
    metrics.observe(turn("discord"), Reply(key, "E2", Outcome.DUPLICATE, total=0.001))
    assert sample(metrics, "parley_dedupe_hits_total") == 2


def test_pending_is_read_at_scrape_time_and_reclaims_are_counted():
    metrics = Metrics()
    held = [1, 2, 3]
    metrics.live.pending = lambda: len(held)
    metrics.reclaimed.inc()
    text = metrics.render().decode()
    assert "parley_inbox_pending 3.0" in text
    assert "parley_turns_reclaimed_total 1.0" in text
    held.pop()
    assert "parley_inbox_pending 2.0" in metrics.render().decode()


async def test_platform_trace_counts_429s_and_5xx_per_attempt():
    statuses = iter([429, 429, 503, 500, 200, 404])

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({}, status=next(statuses))

    app = web.Application()
    app.router.add_post("/api/{method}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/chat.postMessage"
    metrics = Metrics()
    try:
        async with aiohttp.ClientSession(trace_configs=[metrics.platform_trace("slack")]) as session:
            for _ in range(6):
                async with session.post(url) as response:
                    await response.read()
    finally:
        await runner.cleanup()
    assert sample(metrics, "parley_platform_rate_limited_total", platform="slack") == 2
    assert sample(metrics, "parley_platform_errors_total", platform="slack", status="503") == 1
    assert sample(metrics, "parley_platform_errors_total", platform="slack", status="500") == 1
    assert sample(metrics, "parley_platform_rate_limited_total", platform="discord") == 0
