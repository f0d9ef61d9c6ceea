"""The Events API transport without the model: signatures, acks, commands, what is ignored."""

from __future__ import annotations

import asyncio
import logging
import time

from bot import messages
from tests.slack.conftest import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET
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
        slash = await signed_request(stack.session, stack.events_url, command("help", response_url=fake_slack.response_url()),
                                     secret="wrong", form=True)
        assert (bad.status, stale.status, missing.status, slash.status) == (401, 401, 401, 401)
        await asyncio.sleep(1)  # anything wrongly accepted would now be on its way
        assert chat_calls(fake_slack) == [] and fake_slack.responses == []
        assert (await stack.context("C0001", body["event"]["ts"])).messages == ()
        # And the same body, signed correctly and fresh, is accepted.
        assert (await stack.send(body)).status == 200


async def test_url_verification_challenge(stack_for):
    async with stack_for() as stack:
        delivery = await stack.send({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                                     "type": "url_verification"})
        assert delivery.status == 200 and "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" in delivery.text


async def test_slash_help_and_reset_are_acked_then_answered_through_response_url(stack_for, fake_slack):
    fake_slack.latency["response_url"] = 2.0  # the answer is slow; the ack must not wait for it
    async with stack_for() as stack:
        await stack.runtime.store.save(
            (await _key(stack, "D0001")), await stack.context("D0001"), [_msg("user", "remember me")]
        )
        help_ack = await signed_request(stack.session, stack.events_url, command("help", response_url=fake_slack.response_url()),
                                        secret=SIGNING_SECRET, form=True)
        reset_ack = await signed_request(stack.session, stack.events_url, command("reset", response_url=fake_slack.response_url()),
                                         secret=SIGNING_SECRET, form=True)
        assert help_ack.status == 200 and reset_ack.status == 200
        await fake_slack.wait_for(lambda: len(fake_slack.responses) == 2)
        assert all(r["at"] > help_ack.at for r in fake_slack.responses)  # acked before answered
        assert sorted(r["text"] for r in fake_slack.responses) == sorted([messages.HELP, messages.RESET_DONE])
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
            {"type": "reaction_added", "user": "UALICE", "reaction": "eyes", "item": {"type": "message"}, "event_ts": "1.2"},
        ]
        for event in events:
            _, delivery = await stack.deliver(event)
            assert delivery.status == 200
        await asyncio.sleep(1.5)
        assert chat_calls(fake_slack) == []


async def test_file_without_text_gets_one_useful_reply_even_when_retried(stack_for, fake_slack):
    async with stack_for() as stack:
        event = message("D0001", "", channel_type="im", subtype="file_share",
                        files=[{"id": "F0001", "name": "photo.png", "mimetype": "image/png"}])
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


async def _key(stack, channel):
    from bot.turns import ConversationKey

    return ConversationKey("slack", "T0001", channel, "")


def _msg(role, text):
    from bot.context import Message

    return Message(role, text, 3)
