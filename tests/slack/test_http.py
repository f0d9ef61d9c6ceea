"""The Events API transport without the model: signatures, acks, commands, what is ignored."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from adapters.slack.app import web_client
from bot import messages
from bot.config import DialogueSettings, RedisSettings
from bot.ops.metrics import Metrics
from tests.slack.conftest import (
    APP_TOKEN,
    BOT_TOKEN,
    DEAD_LLM,
    SIGNING_SECRET,
    serving,
    slack_settings,
)
from tests.slack.fake import BOT_ID, BOT_USER, command, event_callback, mention, message, sign, signed_request

CHAT = ("chat.postMessage", "chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")


def chat_calls(fake):
    return [c for c in fake.calls if c.method in CHAT]


async def test_bad_signature_missing_signature_and_stale_timestamp_get_401(stack_for, fake_slack):
    async with stack_for() as stack:
        body = event_callback(mention("C0001", "hello"))
        bad = await stack.send(body, signature=sign("not-the-secret", str(int(time.time())), "{}"))
        stale_ts = int(time.time()) - 6 * 60
        stale = await stack.send(body, timestamp=stale_ts)  # correctly signed, but old
        missing = await stack.session.post(stack.events_url, json=body)
        slash = await signed_request(
            stack.session,
            stack.events_url,
            command("help", response_url=fake_slack.response_url()),
            secret="wrong",
            form=True,
        )
        assert (bad.status, stale.status, missing.status, slash.status) == (401, 401, 401, 401)
        await asyncio.sleep(1)  # anything wrongly accepted would now be on its way
        assert chat_calls(fake_slack) == [] and fake_slack.responses == []
        assert (await stack.context("C0001", body["event"]["ts"])).messages == ()
        # And the same body, signed correctly and fresh, is accepted.
        assert (await stack.send(body)).status == 200


async def test_url_verification_challenge(stack_for):
    async with stack_for() as stack:
        delivery = await stack.send(
            {
                "token": "x",
                "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                "type": "url_verification",
            }
        )
        assert delivery.status == 200 and "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" in delivery.text


async def test_slash_help_and_reset_are_acked_then_answered_through_response_url(stack_for, fake_slack):
    fake_slack.latency["response_url"] = 2.0  # the answer is slow; the ack must not wait for it
    async with stack_for() as stack:
        await stack.runtime.store.save(
            (await _key(stack, "D0001")), await stack.context("D0001"), [_msg("user", "remember me")]
        )
        help_ack = await signed_request(
            stack.session,
            stack.events_url,
            command("help", response_url=fake_slack.response_url()),
            secret=SIGNING_SECRET,
            form=True,
        )
        reset_ack = await signed_request(
            stack.session,
            stack.events_url,
            command("reset", response_url=fake_slack.response_url()),
            secret=SIGNING_SECRET,
            form=True,
        )
        assert help_ack.status == 200 and reset_ack.status == 200
        await fake_slack.wait_for(lambda: len(fake_slack.responses) == 2)
        assert all(r["at"] > help_ack.at for r in fake_slack.responses)  # acked before answered
        # (Slack's help says what this deployment offers: with Redis, `/parley config` for admins.)
        assert sorted(r["text"] for r in fake_slack.responses) == sorted(
            [messages.slack_help(config=True), messages.RESET_DONE]
        )
        assert all(r["response_type"] == "ephemeral" for r in fake_slack.responses)
        assert (await stack.context("D0001")).messages == ()


async def test_own_bot_and_subtype_messages_are_acked_and_ignored(stack_for, fake_slack):
    async with stack_for() as stack:
        events = [
            message("D0001", "my own answer", user=BOT_USER, channel_type="im", bot_id=BOT_ID),
            message("D0001", "beep", user="UOTHERBOT", channel_type="im", bot_id="BOTHER", subtype="bot_message"),
            message("D0001", "edited", channel_type="im", subtype="message_changed"),
            message("D0001", "", channel_type="im", subtype="message_deleted"),
            message("C0001", "<@UALICE> has joined the channel", subtype="channel_join"),
            message("C0001", "chatter not for Parley"),
            message("C0001", "a reply in a thread Parley is not in", thread_ts="1700000000.000001"),
            {
                "type": "reaction_added",
                "user": "UALICE",
                "reaction": "eyes",
                "item": {"type": "message"},
                "event_ts": "1.2",
            },
        ]
        for event in events:
            _, delivery = await stack.deliver(event)
            assert delivery.status == 200
        await asyncio.sleep(1.5)
        assert chat_calls(fake_slack) == []


async def test_file_without_text_gets_one_useful_reply_even_when_retried(stack_for, fake_slack):
    async with stack_for() as stack:
        event = message(
            "D0001",
            "",
            channel_type="im",
            subtype="file_share",
            files=[{"id": "F0001", "name": "photo.png", "mimetype": "image/png"}],
        )
        body, first = await stack.deliver(event)
        retry = await stack.send(body, retry_num=1)
        assert first.status == retry.status == 200
        await fake_slack.wait_for(lambda: fake_slack.in_thread("D0001", None))
        await asyncio.sleep(1)
        assert [m.text for m in fake_slack.in_thread("D0001", None)] == [messages.NO_TEXT]


async def test_tokens_never_logged(stack_for, fake_slack, caplog):
    caplog.set_level(logging.DEBUG)
    async with stack_for() as stack:
        await stack.deliver(message("D0001", "", channel_type="im", subtype="file_share", files=[{"id": "F1"}]))
        await fake_slack.wait_for(lambda: fake_slack.in_thread("D0001", None))
        await stack.send(event_callback(mention("C0001", "x")), signature="v0=bad")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "auth.test" in text or "chat.postMessage" in text  # debug logging really was on
    for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET):
        assert secret not in text


def counted(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def file_share(channel):
    """A DM with only a file: the adapter itself answers it (NO_TEXT), no model involved."""
    return message(channel, "", channel_type="im", subtype="file_share", files=[{"id": "F1", "name": "a.png"}])


async def test_a_429_on_a_post_is_waited_out_counted_and_posted_once(stack_for, fake_slack):
    fake_slack.rate_limits["chat.postMessage"] = 1
    async with stack_for() as stack:
        await stack.deliver(file_share("D0001"))
        await fake_slack.wait_for(lambda: fake_slack.in_thread("D0001", None))
        await asyncio.sleep(0.5)
        assert [m.text for m in fake_slack.in_thread("D0001", None)] == [messages.NO_TEXT]
        assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [429, 200]
        assert counted(stack.runtime.metrics, "parley_platform_rate_limited_total", platform="slack") == 1


async def test_a_503_is_retried_but_a_500_on_a_post_is_not_and_both_are_counted(stack_for, fake_slack, caplog):
    async with stack_for() as stack:
        fake_slack.server_errors["chat.postMessage"] = [503]
        await stack.deliver(file_share("D0001"))
        await fake_slack.wait_for(lambda: fake_slack.in_thread("D0001", None))
        # A 500 may come after Slack made the message: posting again could show it twice.
        fake_slack.server_errors["chat.postMessage"] = [500]
        await stack.deliver(file_share("D0002"))
        await fake_slack.wait_for(lambda: any("could not post a notice" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(1.5)  # a retry (backoff about 0.5 s) would have come by now
        assert [c.status for c in fake_slack.calls_to("chat.postMessage")] == [503, 200, 500]
        assert fake_slack.in_thread("D0002", None) == []
        metrics = stack.runtime.metrics
        assert counted(metrics, "parley_platform_errors_total", platform="slack", status="503") == 1
        assert counted(metrics, "parley_platform_errors_total", platform="slack", status="500") == 1


async def test_a_500_on_an_edit_is_retried_once(fake_slack):
    metrics = Metrics()
    client = web_client(slack_settings(fake_slack))
    client.session = aiohttp.ClientSession(trace_configs=[metrics.platform_trace("slack")])
    async with client.session:
        posted = await client.chat_postMessage(channel="C0001", text="draft")
        fake_slack.server_errors["chat.update"] = [500]
        await client.chat_update(channel="C0001", ts=posted["ts"], text="final")
    assert [c.status for c in fake_slack.calls_to("chat.update")] == [500, 200]
    assert fake_slack.in_thread("C0001", None)[0].text == "final"
    assert counted(metrics, "parley_platform_errors_total", platform="slack", status="500") == 1


async def test_a_channel_that_is_gone_is_not_retried(stack_for, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.gone_channels.add("CGONE")
    async with stack_for() as stack:  # the model is down: the answer is the apology, posted through the sink
        await stack.deliver(mention("CGONE", "anyone there?"))
        metrics = stack.runtime.metrics
        async with asyncio.timeout(60):
            while counted(metrics, "parley_turns_total", platform="slack", outcome="failed") < 1:
                await asyncio.sleep(0.05)
        calls = len(fake_slack.calls_to("chat.postMessage"))
        await asyncio.sleep(1.5)
        # The answer's post, and nothing more: no notice into a channel that is gone, no retry.
        assert calls == len(fake_slack.calls_to("chat.postMessage")) == 1
        assert all(c.error == "channel_not_found" for c in fake_slack.calls_to("chat.postMessage"))
        assert counted(metrics, "parley_platform_errors_total", platform="slack", status="500") == 0
    failed = [
        r for r in caplog.records if r.name == "bot.dialogue.manager" and r.getMessage().startswith("turn failed:")
    ]
    assert len(failed) == 1 and "channel_not_found" in failed[0].getMessage()


async def test_while_redis_is_down_slack_gets_an_error_status_and_its_redelivery_is_answered(
    fake_slack, make_settings, redis_to_stop
):
    settings = make_settings(
        llm_url=DEAD_LLM,
        redis=RedisSettings(_env_file=None, url=redis_to_stop.url, prefix="outage"),
        dialogue=DialogueSettings(_env_file=None, inbox="redis"),
        slack=slack_settings(fake_slack),
    )
    async with serving(settings, fake_slack) as stack:
        await asyncio.to_thread(redis_to_stop.stop)
        body, refused = await stack.deliver(message("D0001", "asked while Redis is down", channel_type="im"))
        assert refused.status == 500, "not acknowledged: Slack will deliver it again"
        # Slack never redelivers a slash command: it is refused with words instead. (`reset`: the
        # adapter answers `help` itself, without the inbox.)
        slash = await signed_request(
            stack.session,
            stack.events_url,
            command("reset", response_url=fake_slack.response_url()),
            secret=SIGNING_SECRET,
            form=True,
        )
        assert slash.status == 200 and messages.BUSY in slash.text
        await asyncio.sleep(1.0)
        assert fake_slack.in_thread("D0001", None) == []

        await asyncio.to_thread(redis_to_stop.start)  # same port, but empty: the inbox rebuilds its group
        async with asyncio.timeout(30):  # Slack's redeliveries (the first may meet a connection Redis dropped)
            for attempt in range(1, 100):
                again = await stack.send(body, retry_num=attempt)
                if again.status == 200:
                    break
                await asyncio.sleep(0.5)
        assert again.status == 200
        await fake_slack.wait_for(lambda: fake_slack.in_thread("D0001", None))
        await asyncio.sleep(1.0)  # a second answer would be on its way by now
        [answer] = fake_slack.in_thread("D0001", None)
    assert "language model" in answer.text  # the model is down: the answer is the apology


async def _key(stack, channel):
    from bot.turns import ConversationKey

    return ConversationKey("slack", "T0001", channel, "")


def _msg(role, text):
    from bot.store.context import Message

    return Message(role, text, 3)
