"""The web chat end to end: WebSocket clients, the real adapter, dialogue manager, Redis and vLLM engine.

The demo model has random weights, so these check structure (which frames, in which
order, whether the streamed pieces add up to the saved answer), never words.
"""

from __future__ import annotations

import pytest

from bot import messages
from bot.config import DialogueSettings
from tests.web.conftest import Tab

pytestmark = pytest.mark.engine


def answer_of(context) -> str:
    return [m.content for m in context.messages if m.role == "assistant"][-1]


def assert_streamed(deltas, done) -> None:
    """The pieces arrive in order, each starting where the last ended, and add up to the answer."""
    assert deltas, "no delta before done"
    at = 0
    for delta in deltas:
        assert delta["at"] == at
        at += len(delta["text"])
    assert "".join(d["text"] for d in deltas) == done["text"]


async def test_a_message_streams_back_and_equals_the_saved_answer(stack_for, engine):
    async with stack_for(engine, llm={"max_tokens": 48}) as stack:
        tab = await stack.connect()
        await tab.say("what is a KV cache?", id="first-message")
        ack = await tab.next("ack")
        assert ack == {
            "type": "ack",
            "id": "first-message",
            "answer": f"{tab.conversation}:first-message",
            "text": "what is a KV cache?",
        }
        deltas, done = await tab.answer(ack["answer"])
        assert_streamed(deltas, done)
        context = await stack.answered(tab.visitor)
        assert [m.role for m in context.messages] == ["user", "assistant"]
        assert context.messages[0].content == "what is a KV cache?"
        assert done["text"] == answer_of(context) and len(done["text"]) > 0
        # Then the visitor reloads: same conversation, with its history.
        await tab.ws.close()
        again = await stack.connect(tab.token)
        assert again.visitor == tab.visitor and again.welcome["resumed"] is True
        assert again.history == [{"role": m.role, "text": m.content} for m in context.messages]
        # And the conversation goes on from there.
        await again.say("and a follow-up", id="second-message")
        _, second = await again.answer((await again.next("ack"))["answer"])
        context = await stack.answered(tab.visitor, turns=2)
        assert [m.content for m in context.messages][2:] == ["and a follow-up", second["text"]]


async def test_every_tab_of_the_visitor_sees_the_message_and_the_answer(stack_for, engine):
    async with stack_for(engine) as stack:
        one = await stack.connect()
        two = await stack.connect(one.token)
        stranger = await stack.connect()
        await one.say("hello from tab one", id="tab-one-msg")
        ack_one, ack_two = await one.next("ack"), await two.next("ack")
        assert ack_one == ack_two and ack_two["text"] == "hello from tab one"
        (_, done_one), (_, done_two) = await one.answer(ack_one["answer"]), await two.answer(ack_one["answer"])
        assert done_one == done_two
        assert done_one["text"] == answer_of(await stack.answered(one.visitor))
        await stranger.say("and me?", id="stranger-msg")  # the stranger's frames are only the stranger's own
        await stranger.answer((await stranger.next("ack"))["answer"])
        assert all(f.get("id") != ack_one["answer"] for f in stranger.frames)


async def test_a_resend_with_the_same_id_after_a_reconnect_is_answered_once(stack_for, engine):
    async with stack_for(engine) as stack:
        tab = await stack.connect()
        await tab.say("only once please", id="resend-0001")
        ack = await tab.next("ack")
        _, done = await tab.answer(ack["answer"])
        await tab.ws.close()
        # The widget resends what it believes unsent after a reconnect, with the same id.
        again = await stack.connect(tab.token)
        await again.say("only once please", id="resend-0001")
        assert (await again.next("ack"))["answer"] == ack["answer"]
        await again.say("something new", id="resend-0002")
        new_ack = await again.next("ack")
        await again.answer(new_ack["answer"])
        # Turns of one conversation run in order, so the resend was handled before the new message.
        assert all(f.get("id") != ack["answer"] for f in again.frames)
        context = await stack.answered(tab.visitor, turns=2)
        assert [m.content for m in context.messages if m.role == "user"] == ["only once please", "something new"]
        assert len(context.messages) == 4 and context.messages[1].content == done["text"]


async def test_an_answer_finished_while_no_tab_was_open_shows_on_the_next_visit(stack_for, engine):
    async with stack_for(engine, llm={"max_tokens": 32}) as stack:
        tab = await stack.connect()
        await tab.say("I'll be right back", id="gone-000001")
        await tab.next("ack")
        await tab.ws.close()  # before the answer
        context = await stack.answered(tab.visitor)
        back = await stack.connect(tab.token)
        assert back.history == [
            {"role": "user", "text": "I'll be right back"},
            {"role": "assistant", "text": answer_of(context)},
        ]


async def test_a_full_inbox_tells_the_visitor_to_retry(stack_for, engine):
    # One worker slot and room for one turn (in one stream shard, when the inbox is Redis's).
    dialogue = DialogueSettings(_env_file=None, max_in_flight=1, inbox_size=1, stream_shards=1)
    async with stack_for(engine, llm={"max_tokens": 96}, dialogue=dialogue) as stack:
        tabs: list[Tab] = [await stack.connect() for _ in range(5)]
        for i, tab in enumerate(tabs):
            await tab.say(f"message {i}", id=f"busy-00000{i}")
        replies = [await tab.next("ack", "error") for tab in tabs]
        busy = [r for r in replies if r["type"] == "error"]
        assert busy and all(r["code"] == "busy" and r["text"] == messages.BUSY for r in busy)
        assert replies[0]["type"] == "ack"  # the first went straight to the worker
