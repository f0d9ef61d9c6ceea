"""Handing off through the real dialogue manager: routing (the local embedder), moderation,
Redis, and the real Slack desk posting into the fake Slack. The engine is unreachable here,
so every answer the model would give fails — which is also how the failure trigger is tested.
"""

from __future__ import annotations

import logging
import uuid

from bot import messages
from bot.config import TenantsSettings
from bot.errors import PlatformError
from bot.turns import Outcome, Turn
from tests.handoff.conftest import SUPPORT, Recording, quoted
from tests.slack.fake import FakeSlack


def say(text: str, *, visitor: str = "v1", **fields) -> Turn:
    return Turn(
        platform="web", tenant="shop", channel=visitor, user=visitor, text=text, event_id=uuid.uuid4().hex, **fields
    )


def ticket_of(fake: FakeSlack):
    [ticket] = fake.in_thread(SUPPORT, None)
    return ticket, [m.text for m in fake.in_thread(SUPPORT, ticket.ts)]


async def test_asking_for_a_person_opens_a_ticket_and_the_people_take_over(runtime_for, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    async with runtime_for() as rt:
        visitor = Recording()
        first = await rt.manager.handle(say("my mail is jane.doe@example.com and sync is broken"), visitor)
        assert first.outcome is Outcome.FAILED  # the engine is down: the user was told, the message saved

        asked = say("I want to talk to a person")
        reply = await rt.manager.handle(asked, visitor)
        assert (reply.outcome, reply.intent, reply.route_step) == (Outcome.HANDED_OFF, "handoff", "semantic")
        assert visitor.sent[-1] == messages.HANDED_OFF
        ticket = await rt.tickets.ticket(asked.key)
        assert ticket is not None and ticket.reason == "request" and ticket.desk == "slack"

        # The support channel: a ticket with the platform, the tenant, the conversation and a Resolve button ...
        head, thread = ticket_of(fake_slack)
        assert ticket.thread == f"{SUPPORT}:{head.ts}"
        assert "*web*" in head.text and "`shop`" in head.text and str(asked.key) in head.text
        [button] = head.blocks[1]["elements"]
        assert button["action_id"] == "parley_resolve" and button["text"]["text"] == messages.RESOLVE_BUTTON
        # ... and the transcript in its thread, personal data redacted.
        assert "[email removed]" in thread[0] and "jane.doe" not in thread[0]
        assert quoted("Customer", "I want to talk to a person") in thread[0]

        # Now the user's messages go to the people, not the model.
        later = await rt.manager.handle(say("it's about invoice 1234, <!channel>"), visitor)
        assert later.outcome is Outcome.FORWARDED and visitor.sent[-1] == messages.HANDED_OFF
        assert ticket_of(fake_slack)[1][-1] == quoted("Customer", "it's about invoice 1234, &lt;!channel&gt;")

        # A person's reply reaches the user with their name, and the context keeps it.
        agent = ticket.turn(command="agent", user="UAGENT", text="Hi, I'm on it.", event_id="Ev-a1", agent="Ann")
        assert (await rt.manager.handle(agent, visitor)).outcome is Outcome.RELAYED
        assert visitor.sent[-1] == messages.agent_reply("Ann", "Hi, I'm on it.")
        assert (await rt.manager.handle(agent, visitor)).outcome is Outcome.DUPLICATE  # Slack's retry of it

        resolve = ticket.turn(command="resolve", user="UAGENT", text="resolve", event_id="Ev-r1", agent="Ann")
        assert (await rt.manager.handle(resolve, visitor)).outcome is Outcome.RESOLVED
        assert visitor.sent[-1] == messages.HANDED_BACK
        assert ticket_of(fake_slack)[1][-1] == messages.resolved_by("Ann")
        assert await rt.tickets.ticket(asked.key) is None

        context = await rt.store.load(asked.key)
        assert [(m.role, m.content) for m in context.messages] == [
            ("user", "my mail is [email removed] and sync is broken"),  # its answer failed: not saved
            ("user", "I want to talk to a person"),
            ("assistant", messages.HANDED_OFF),
            ("user", "it's about invoice 1234, <!channel>"),
            ("assistant", messages.agent_reply("Ann", "Hi, I'm on it.")),
            ("assistant", messages.HANDED_BACK),
        ]

        # Back with the bot: the next message goes to the model again (which is down here).
        assert (await rt.manager.handle(say("and another question"), visitor)).outcome is Outcome.FAILED

        # Late events from the closed ticket are not delivered, and the people are told so.
        late = ticket.turn(command="agent", user="UAGENT", text="one more thing", event_id="Ev-a2", agent="Ann")
        assert (await rt.manager.handle(late, visitor)).outcome is Outcome.IGNORED
        again = ticket.turn(command="resolve", user="UAGENT", text="", event_id="Ev-r2", agent="Ann")
        assert (await rt.manager.handle(again, visitor)).outcome is Outcome.IGNORED
        assert ticket_of(fake_slack)[1][-2:] == [messages.AGENT_NOT_DELIVERED, messages.ALREADY_WITH_BOT]
        assert not any("one more thing" in s for s in visitor.sent)

        [day] = await rt.stats.days(days=1, tenant="shop")
        assert (day.handoffs, day.resolved, day.conversations, day.handed_conversations) == (1, 1, 1, 1)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "not handed off" in text and "resolved by Ann" in text


async def test_two_failed_answers_in_a_row_hand_off(runtime_for, fake_slack):
    async with runtime_for(after_failures=2) as rt:
        visitor = Recording()
        # Each with its inbox id, as a worker hands them over: each turn is saved once under it.
        one = await rt.manager.handle(say("first question", visitor="v2", uid="1-0"), visitor)
        assert one.outcome is Outcome.FAILED and not fake_slack.in_thread(SUPPORT, None)
        two = await rt.manager.handle(say("second question", visitor="v2", uid="2-0"), visitor)
        assert two.outcome is Outcome.FAILED  # the turn failed; then the conversation was handed off
        assert visitor.sent[-1] == messages.HANDED_OFF_AFTER_FAILURES
        # The notice is in the history too (saved apart from the failed turn it follows).
        context = await rt.store.load(two.key)
        assert [(m.role, m.content) for m in context.messages][-2:] == [
            ("user", "second question"),
            ("assistant", messages.HANDED_OFF_AFTER_FAILURES),
        ]
        ticket = await rt.tickets.ticket(say("x", visitor="v2").key)
        assert ticket is not None and ticket.reason == "failures"
        _, thread = ticket_of(fake_slack)
        assert quoted("Customer", "first question") in thread[0] and quoted("Customer", "second question") in thread[0]


async def test_failures_trigger_can_be_off(runtime_for, fake_slack):
    async with runtime_for(after_failures=0) as rt:
        for n in range(3):
            assert (await rt.manager.handle(say(f"question {n}", visitor="v3"), Recording())).outcome is Outcome.FAILED
        assert not fake_slack.in_thread(SUPPORT, None)


async def test_an_angry_user_goes_to_a_person_and_swearing_is_starred_out(runtime_for, fake_slack):
    async with runtime_for() as rt:
        visitor = Recording()
        reply = await rt.manager.handle(say("this fucking thing never syncs", visitor="v4"), visitor)
        assert (reply.outcome, reply.route_step) == (Outcome.HANDED_OFF, "anger")
        _, thread = ticket_of(fake_slack)
        assert quoted("Customer", "this ******* thing never syncs") in thread[0]
        shouting = await rt.manager.handle(say("THIS IS USELESS", visitor="v5"), visitor)
        assert shouting.outcome is Outcome.HANDED_OFF


async def test_with_the_anger_trigger_off_swearing_is_refused_as_before(runtime_for, fake_slack):
    async with runtime_for(on_anger=False) as rt:
        visitor = Recording()
        reply = await rt.manager.handle(say("this fucking thing never syncs", visitor="v6"), visitor)
        assert reply.outcome is Outcome.REJECTED and not fake_slack.in_thread(SUPPORT, None)


async def test_personal_data_is_redacted_in_the_transcript_even_when_the_tenant_only_flags_it(
    runtime_for, fake_slack, tmp_path
):
    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[default.moderation]\npersonal_data = "flag"\n')
    async with runtime_for(tenants=TenantsSettings(_env_file=None, file=tenants)) as rt:
        visitor = Recording()
        await rt.manager.handle(say("call me on +49 30 1234567, I want a human", visitor="v7"), visitor)
        context = await rt.store.load(say("x", visitor="v7").key)
        assert "+49 30 1234567" in context.messages[0].content  # flagged: the bot saw it
        _, thread = ticket_of(fake_slack)
        assert "[phone removed]" in thread[0] and "1234567" not in thread[0]


async def test_without_a_desk_the_user_is_told_no_person_is_reachable_and_the_bot_keeps_answering(
    runtime_for, fake_slack
):
    async with runtime_for(desk=False) as rt:
        visitor = Recording()
        asked = say("Can I speak to a real person?", visitor="v8")
        reply = await rt.manager.handle(asked, visitor)
        assert (reply.outcome, reply.intent) == (Outcome.ANSWERED, "handoff")
        assert visitor.sent == [messages.NO_AGENT]
        assert await rt.tickets.ticket(asked.key) is None
        assert (
            await rt.manager.handle(say("ok then, how do I export?", visitor="v8"), visitor)
        ).outcome is Outcome.FAILED

        # That answer can be voted on; a vote on anything else is ignored, with a reason.
        vote = say("up", visitor="v8", command="feedback", reply_to=asked.event_id)
        assert (await rt.manager.handle(vote, visitor)).outcome is Outcome.FEEDBACK
        same = say("up", visitor="v8", command="feedback", reply_to=asked.event_id)
        assert (await rt.manager.handle(same, visitor)).error == "same vote"
        unknown = say("down", visitor="v8", command="feedback", reply_to="no-such-answer")
        assert (await rt.manager.handle(unknown, visitor)).error == "unknown answer"
        odd = say("meh", visitor="v8", command="feedback", reply_to=asked.event_id)
        assert (await rt.manager.handle(odd, visitor)).error == "not a vote"
        [day] = await rt.stats.days(days=1, tenant="shop")
        assert (day.answers, day.up, day.down, day.handoffs) == (1, 1, 0, 0)
        assert visitor.sent[-1] != "up"  # votes are silent


async def test_with_requests_off_asking_for_a_person_is_plain_chat(runtime_for, fake_slack):
    async with runtime_for(on_request=False) as rt:
        reply = await rt.manager.handle(say("I want to talk to a person", visitor="v9"), Recording())
        # Routing still recognises the request; handoff is not allowed here, so it is answered as chat.
        assert (reply.outcome, reply.intent, reply.route_step) == (Outcome.FAILED, "chat", "disabled")


async def test_an_unreachable_desk_is_said_plainly_and_retried_on_the_next_request(runtime_for, fake_slack):
    fake_slack.gone_channels.add(SUPPORT)
    async with runtime_for(after_failures=1) as rt:
        visitor = Recording()
        asked = say("I want to talk to a person", visitor="v10")
        reply = await rt.manager.handle(asked, visitor)
        assert (reply.outcome, reply.intent) == (Outcome.FAILED, "handoff")  # not counted as a failed answer
        assert visitor.sent == [messages.NO_AGENT_NOW]
        assert await rt.tickets.ticket(asked.key) is None
        fake_slack.gone_channels.clear()
        assert (
            await rt.manager.handle(say("I want to talk to a person", visitor="v10"), visitor)
        ).outcome is Outcome.HANDED_OFF


async def test_when_the_desk_or_the_customer_cannot_be_reached_the_other_side_is_told(runtime_for, fake_slack):
    async with runtime_for() as rt:
        visitor = Recording()
        asked = say("I want to talk to a person", visitor="v11")
        await rt.manager.handle(asked, visitor)
        ticket = await rt.tickets.ticket(asked.key)
        fake_slack.gone_channels.add(SUPPORT)
        lost = await rt.manager.handle(say("hello?", visitor="v11"), visitor)
        assert (lost.outcome, visitor.sent[-1]) == (Outcome.FAILED, messages.FORWARD_FAILED)
        assert await rt.tickets.ticket(asked.key) is not None  # still handed off
        fake_slack.gone_channels.clear()

        visitor.fail = PlatformError("gone", platform="web", code="visitor_gone")
        agent = ticket.turn(command="agent", user="UAGENT", text="still there?", event_id="Ev-x", agent="Ann")
        assert (await rt.manager.handle(agent, visitor)).outcome is Outcome.FAILED
        assert ticket_of(fake_slack)[1][-1] == messages.relay_failed("visitor_gone")
        context = await rt.store.load(asked.key)
        assert not any("still there?" in m.content for m in context.messages)  # never shown, never saved


async def test_anger_does_not_get_personal_data_past_a_refusal(runtime_for, fake_slack, tmp_path):
    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[default.moderation]\npersonal_data = "refuse"\n')
    async with runtime_for(tenants=TenantsSettings(_env_file=None, file=tenants)) as rt:
        reply = await rt.manager.handle(say("USELESS!! my card is 4111 1111 1111 1111", visitor="v12"), Recording())
        assert (reply.outcome, reply.error) == (Outcome.REJECTED, "moderation")
        assert not fake_slack.in_thread(SUPPORT, None)
