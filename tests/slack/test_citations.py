"""A knowledge-base answer's sources on Slack: a context block of links under the answer, through
slack-bolt against the fake Slack, with the scripted engine stand-in and the sample knowledge base.

Whether the answer is edited into place or streamed natively, its last message ends with the
sources (each `[n]` linked to its document) above the 👍/👎 buttons, and the answer's text does
not repeat them. When Slack refuses the blocks, the sources follow as a message of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.slack.sink import sources_block
from bot import messages
from bot.knowledge.base import load_documents
from bot.reply import Source
from tests.slack.conftest import SlackStack
from tests.slack.fake import Posted, mention
from tests.standin import ScriptedEngine

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-kb"
CHANNEL = "C0001"
ANSWER = "Open a note, then choose Export and Markdown [1]."
QUESTION = "how can I export my notes as markdown?"


@pytest.fixture
async def standin():
    async with ScriptedEngine(ANSWER).serving() as url:
        yield url


async def asked(stack: SlackStack) -> list[Posted]:
    """Ask the sample knowledge base a question; the answer's messages once the last is whole."""
    await stack.runtime.kb.ingest("default", load_documents(SAMPLE))
    event = mention(CHANNEL, QUESTION)
    await stack.deliver(event)
    context = await stack.answered(CHANNEL, event["ts"], timeout=60)
    assert messages.SOURCES_TITLE not in context.messages[-1].content  # history keeps the answer only
    await stack.fake.wait_for(lambda: any(m.blocks for m in stack.fake.in_thread(CHANNEL, event["ts"])))
    return stack.fake.in_thread(CHANNEL, event["ts"])


def context_text(message: Posted) -> str:
    [block] = [b for b in message.blocks or [] if b["type"] == "context"]
    return str(block["elements"][0]["text"])


async def test_edited_answer_ends_with_linked_sources_above_the_buttons(stack_for, standin):
    async with stack_for(standin, feedback_buttons=True) as stack:
        [answer] = await asked(stack)
    kinds = [b["type"] for b in answer.blocks or []]
    assert kinds == ["section", "context", "context_actions"]
    assert answer.text == ANSWER and "Sources" not in answer.blocks[0]["text"]["text"]
    cited = context_text(answer)
    assert cited.startswith(f"*{messages.SOURCES_TITLE}*\n<https://help.quillstack.example/notes")
    assert "|[1] " in cited


async def test_streamed_answer_stops_with_the_sources(stack_for, standin, fake_slack):
    fake_slack.streaming = True
    async with stack_for(standin, native_streaming=True) as stack:
        [answer] = await asked(stack)
    assert answer.streamed and answer.stopped
    [stop] = fake_slack.calls_to("chat.stopStream")
    assert [b["type"] for b in stop.args["blocks"]] == ["context", "context_actions"]
    assert "<https://help.quillstack.example/notes" in context_text(answer)


async def test_sources_follow_as_a_message_when_slack_refuses_the_blocks(stack_for, standin, fake_slack):
    fake_slack.blocks_refused.add("chat.update")
    async with stack_for(standin, feedback_buttons=True) as stack:
        await stack.runtime.kb.ingest("default", load_documents(SAMPLE))
        event = mention(CHANNEL, QUESTION)
        await stack.deliver(event)
        await stack.answered(CHANNEL, event["ts"], timeout=60)
        cited = await fake_slack.wait_for(
            lambda: next((m for m in fake_slack.in_thread(CHANNEL, event["ts"]) if "[1] " in m.text), None)
        )
    assert cited.text.startswith(f"{messages.SOURCES_TITLE}:\n[1] ")
    assert "(https://help.quillstack.example/notes" in cited.text


def test_the_block_escapes_titles_and_links_only_web_addresses():
    block = sources_block(
        [
            Source("<!channel> & co", "https://x.example/a|b>c", "a.md"),
            Source("Local", "", "docs/local.md"),
            Source("Script", "javascript:alert(1)", "s.md"),
        ]
    )
    text: Any = block["elements"][0]["text"]
    lines = text.split("\n")
    assert lines[1] == "<https://x.example/a%7Cb&gt;c|[1] &lt;!channel&gt; &amp; co>"
    assert lines[2] == "[2] Local (docs/local.md)"
    assert lines[3] == "[3] Script (javascript:alert(1))"  # named, never a link
    many = sources_block([Source("t" * 150, "https://x.example/" + "p" * 900, "x")] * 40)
    assert len(many["elements"][0]["text"]) <= 3000
