"""Slack end to end: slack-bolt against the fake Slack, the real dialogue manager, Redis and vLLM engine.

The demo model has random weights, so these check structure (which calls, in which
thread, how long, whether the final text is the whole answer), never words.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters.slack.mrkdwn import escape
from bot import messages
from bot.config import DialogueSettings
from tests.slack.conftest import APP_TOKEN, SIGNING_SECRET
from tests.slack.fake import command, event_callback, mention, message, signed_request

pytestmark = pytest.mark.engine


def answer_of(context) -> str:
    """The last answer as Slack shows it: escaped (random weights write `<`, `>` and `&` too)."""
    return escape([m.content for m in context.messages if m.role == "assistant"][-1])


async def test_mention_gets_a_threaded_streamed_answer(stack_for, fake_slack, engine):
    async with stack_for(engine, llm={"max_tokens": 64}) as stack:
        event = mention("C0001", "what is a KV cache?")
        _, ack = await stack.deliver(event)
        # Slack also sends the `message` copy of a channel message that mentions the app.
        _, copy_ack = await stack.deliver(message("C0001", event["text"], ts=event["ts"]))
        assert ack.status == copy_ack.status == 200
        context = await stack.answered("C0001", event["ts"])
        answer = answer_of(context)
        [posted] = fake_slack.in_thread("C0001", event["ts"])  # one message, in the mention's thread
        assert posted.text == answer and len(answer) > 0
        posts = fake_slack.calls_to("chat.postMessage")
        updates = fake_slack.calls_to("chat.update")
        assert len(posts) == 1 and posts[0].args["thread_ts"] == event["ts"]
        assert all(u.args["ts"] == posted.ts and u.started > posts[0].started for u in updates)
        # Posted as soon as the first tokens existed, then edited up to the whole answer (unless the
        # engine's stream arrived in one burst, on a busy machine: then one post says it all).
        assert answer.startswith(posts[0].args["text"])
        if posts[0].args["text"] != answer:
            assert updates and updates[-1].args["text"] == answer
        assert context.messages[0].content == "what is a KV cache?"


async def test_thread_follow_up_without_mention_continues_the_context(stack_for, fake_slack, engine):
    async with stack_for(engine) as stack:
        event = mention("C0001", "first question")
        await stack.deliver(event)
        await stack.answered("C0001", event["ts"])
        await stack.deliver(message("C0001", "and a follow-up", thread_ts=event["ts"]))
        context = await stack.answered("C0001", event["ts"], turns=2)
        assert [m.role for m in context.messages] == ["user", "assistant", "user", "assistant"]
        assert context.messages[2].content == "and a follow-up"
        posted = fake_slack.in_thread("C0001", event["ts"])
        assert len(posted) == 2 and posted[1].text == escape(context.messages[3].content)
        assert all(c.args.get("thread_ts") == event["ts"] for c in fake_slack.calls_to("chat.postMessage"))


async def test_dm_is_one_conversation_answered_at_top_level(stack_for, fake_slack, engine):
    async with stack_for(engine) as stack:
        await stack.deliver(message("D0001", "hello there", channel_type="im"))
        await stack.answered("D0001")
        await stack.deliver(message("D0001", "second message", channel_type="im"))
        context = await stack.answered("D0001", turns=2)
        assert len(context.messages) == 4
        posted = fake_slack.in_thread("D0001", None)
        assert [m.text for m in posted] == [escape(context.messages[1].content), escape(context.messages[3].content)]
        # A threaded reply in the DM is its own conversation, answered in that thread.
        await stack.deliver(message("D0001", "about this one", channel_type="im", thread_ts=posted[0].ts))
        threaded = await stack.answered("D0001", posted[0].ts)
        assert fake_slack.in_thread("D0001", posted[0].ts)[0].text == answer_of(threaded)


async def test_retry_while_the_first_attempt_is_generating_gets_no_second_answer(stack_for, fake_slack, engine, caplog):
    caplog.set_level(logging.INFO, logger="bot.dialogue.manager")
    fake_slack.latency["chat.postMessage"] = 2.0  # holds the first attempt mid-answer
    async with stack_for(engine, llm={"max_tokens": 48}) as stack:
        event = mention("C0001", "tell me a story")
        body, first = await stack.deliver(event)
        [post] = await fake_slack.wait_for(lambda: fake_slack.calls_to("chat.postMessage"))  # answering now
        retry = await stack.send(body, retry_num=1)
        assert first.status == retry.status == 200
        await fake_slack.wait_for(lambda: post.ended)
        assert retry.at < post.ended  # the retry really arrived while the first answer was under way
        await stack.answered("C0001", event["ts"])
        async with asyncio.timeout(60):
            while not any("duplicate" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.1)
        assert len(fake_slack.calls_to("chat.postMessage")) == 1
        assert len((await stack.context("C0001", event["ts"])).messages) == 2


async def test_429_on_update_and_on_post_still_one_complete_answer(stack_for, fake_slack, engine):
    fake_slack.rate_limits.update({"chat.postMessage": 1, "chat.update": 1})
    async with stack_for(engine, llm={"max_tokens": 48}) as stack:
        event = mention("C0001", "rate limits")
        await stack.deliver(event)
        answer = answer_of(await stack.answered("C0001", event["ts"]))
        [posted] = fake_slack.in_thread("C0001", event["ts"])
        assert posted.text == answer
        assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [429, 200]
        # Edits happen when tokens arrived after the post; each 429 among them was waited out
        # and retried (test_sink covers 429s on edits with a stream that always needs edits).
        updates = [c.status for c in fake_slack.calls_to("chat.update")]
        assert updates in ([], [429, 200]) or (updates[:2] == [429, 200] and set(updates[2:]) <= {200})
        limited = stack.runtime.metrics.registry.get_sample_value(
            "parley_platform_rate_limited_total", {"platform": "slack"}
        )
        assert limited == 1 + updates.count(429)  # every 429 the adapter met, counted


async def test_every_ack_arrives_before_the_slow_web_api_call_completes(stack_for, fake_slack, engine):
    fake_slack.latency.update({"chat.postMessage": 4.0, "chat.update": 4.0, "response_url": 4.0})
    async with stack_for(engine) as stack:
        events = [mention("C0001", "slow one"), message("D0001", "slow two", channel_type="im")]
        acks = [(await stack.deliver(e))[1] for e in events]
        slash_ack = await signed_request(
            stack.session,
            stack.events_url,
            command("help", response_url=fake_slack.response_url()),
            secret=SIGNING_SECRET,
            form=True,
        )
        assert all(a.status == 200 for a in [*acks, slash_ack])
        await stack.answered("C0001", events[0]["ts"])
        await stack.answered("D0001")
        await fake_slack.wait_for(lambda: fake_slack.responses)
        first_post = {c.args["channel"]: c for c in fake_slack.calls_to("chat.postMessage")}
        assert acks[0].at < first_post["C0001"].ended and acks[1].at < first_post["D0001"].ended
        assert slash_ack.at < fake_slack.responses[0]["at"]


async def test_busy_inbox_tells_the_user(stack_for, fake_slack, engine):
    fake_slack.latency["chat.postMessage"] = 2.0  # keeps the first turn in flight
    # One stream shard, so the bound holds for all five conversations together.
    dialogue = DialogueSettings(_env_file=None, max_in_flight=1, inbox_size=1, stream_shards=1)
    async with stack_for(engine, dialogue=dialogue) as stack:
        events = [message(f"D000{i}", f"message {i}", channel_type="im") for i in range(1, 6)]
        for event in events:
            assert (await stack.deliver(event))[1].status == 200
        await fake_slack.wait_for(lambda: any(m.text == messages.BUSY for m in fake_slack.messages), timeout=60)


async def test_native_streaming_where_offered(stack_for, fake_slack, engine):
    fake_slack.streaming = True
    async with stack_for(engine, llm={"max_tokens": 48}, native_streaming=True) as stack:
        event = mention("C0001", "stream it natively")
        await stack.deliver(event)
        answer = answer_of(await stack.answered("C0001", event["ts"]))
        [posted] = fake_slack.in_thread("C0001", event["ts"])
        assert posted.streamed and posted.stopped and posted.text == answer
        [start] = fake_slack.calls_to("chat.startStream")
        assert start.args["thread_ts"] == event["ts"] and start.args["recipient_user_id"] == "UALICE"
        assert fake_slack.calls_to("chat.postMessage") == [] and fake_slack.calls_to("chat.update") == []


async def test_native_streaming_refused_falls_back_to_edits_once(stack_for, fake_slack, engine):
    async with stack_for(engine, native_streaming=True) as stack:  # the fake answers unknown_method
        first, second = mention("C0001", "one"), mention("C0001", "two")
        await stack.deliver(first)
        a1 = answer_of(await stack.answered("C0001", first["ts"]))
        await stack.deliver(second)
        a2 = answer_of(await stack.answered("C0001", second["ts"]))
        assert [m.text for m in fake_slack.in_thread("C0001", first["ts"])] == [a1]
        assert [m.text for m in fake_slack.in_thread("C0001", second["ts"])] == [a2]
        assert len(fake_slack.calls_to("chat.startStream")) == 1  # learnt once, then straight to edits


async def test_socket_mode_end_to_end(stack_for, fake_slack, engine, caplog):
    caplog.set_level(logging.DEBUG)
    async with stack_for(engine, app_token=APP_TOKEN, signing_secret=None) as stack:
        assert fake_slack.calls_to("apps.connections.open") and fake_slack.connected
        event = mention("C0001", "over the socket")
        envelope = await fake_slack.push("events_api", event_callback(event))
        await fake_slack.wait_for(lambda: fake_slack.ack_of(envelope))
        answer = answer_of(await stack.answered("C0001", event["ts"]))
        assert [m.text for m in fake_slack.in_thread("C0001", event["ts"])] == [answer]
        # The ack came before the answer was posted.
        assert fake_slack.ack_of(envelope).at < fake_slack.calls_to("chat.postMessage")[0].started
        slash = await fake_slack.push(
            "slash_commands", command("reset", channel="C0001", response_url=fake_slack.response_url())
        )
        await fake_slack.wait_for(lambda: fake_slack.ack_of(slash) and fake_slack.responses)
        assert fake_slack.responses[0]["text"] == messages.RESET_DONE
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert APP_TOKEN not in text and "xoxb-" not in text
